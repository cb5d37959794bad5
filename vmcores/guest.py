"""A fixture kernel booted under QEMU/TCG, driven over QMP and a serial command channel.

The guest's ``/init`` (see ``INIT``) reads one shell command per line from
a second serial line (ttyS1 on x86-64; see MACHINES for the others) and
answers with its output followed by ``@@DONE <status>``.  The console is
logged to a file.  Two QMP sockets are opened: one for the
factory and one left untouched for the tool under test (drgn hung on a socket
that another client had used and closed); ``extra_qmp`` adds more, one per
further tool, in ``extra_qmp_paths``.
"""

import gzip
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .paths import log

BUSYBOX = Path("/bin/busybox")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /mnt/huge
exec 3<>@CHANNEL@
stty -F @CHANNEL@ raw -echo -icrnl -onlcr -hupcl 2>/dev/null
echo "@@READY" >&3
while true; do
  # Not ash's "read": a signal to PID 1 (SIGCHLD of an orphan reparented to
  # it, as the churn tests make) interrupts it and loses the bytes it had
  # read.  head runs in a child; the host sends one line and then waits.
  line=$(head -n 1 <&3)
  [ -n "$line" ] || { sleep 0.1; continue; }
  # PID 1 exits: "Attempted to kill init!", a panic, and crash_kexec() into
  # a capture kernel loaded with kexec -p (vmcores/kdump.py).
  [ "$line" = "@@CRASH" ] && exit 1
  ( eval "$line" ) > /tmp/out 2>&1 < /dev/null
  rc=$?
  cat /tmp/out >&3
  echo "@@DONE $rc" >&3
done
"""


class Machine(NamedTuple):
    """What differs between the fixture architectures' QEMU guests."""

    qemu: str
    #: -machine, then any -cpu / -bios arguments.
    machine: str
    extra: Tuple[str, ...]
    #: The console (first -serial) as the kernel names it.
    console: str
    #: The guest device /init talks to the factory on.
    channel: str
    #: The command channel's QEMU arguments ({path}: its socket).
    channel_args: Tuple[str, ...]
    #: QEMU's vmcoreinfo device (fw_cfg) writes VMCOREINFO into its dumps.
    vmcoreinfo_device: bool = True


#: UEFI for arm64 (qemu-efi-aarch64): code read-only, variables a copy per
#: guest.  Not -bios: with it the firmware reports the second flash bank
#: (64 MiB at 64 MiB) as RAM, which no SRAT node covers, and the kernel
#: gives up on NUMA ("Faking a node").
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"

MACHINES: Dict[str, Machine] = {
    "x86_64": Machine("qemu-system-x86_64", "q35", (), "ttyS0", "/dev/ttyS1",
                      ("-serial", "unix:{path},server=on,wait=off")),
    # virt has one UART: the command channel is a virtconsole (hvc0).  UEFI
    # (qemu-efi-aarch64) loads the kernel and gives it ACPI, through which
    # pc-dimms are hot-plugged (the ACPI GED).
    "arm64": Machine("qemu-system-aarch64", "virt", ("-cpu", "cortex-a57",
                      "-drive", f"if=pflash,format=raw,readonly=on,file={AAVMF_CODE}",
                      "-drive", "if=pflash,format=raw,file={vars}"),
                     "ttyAMA0", "/dev/hvc0",
                     ("-device", "virtio-serial-pci,id=vser",
                      "-chardev", "socket,id=cmdchan,path={path},server=on,wait=off",
                      "-device", "virtconsole,chardev=cmdchan")),
    # pseries with the virtual open firmware (x-vof: about 7 s to the kernel
    # instead of about 58 s under SLOF), POWER9, radix.  Each -serial is a
    # spapr-vty: hvc0 the console, hvc1 the channel.  No fw_cfg, so no
    # vmcoreinfo device: the factory adds VMCOREINFO from the guest's sysfs.
    "ppc64le": Machine("qemu-system-ppc64", "pseries,x-vof=on", ("-cpu", "power9"),
                       "hvc0", "/dev/hvc1", ("-serial", "unix:{path},server=on,wait=off"),
                       vmcoreinfo_device=False),
}


def busybox(arch: str = "x86_64") -> Path:
    """A static busybox for ``arch``: the machine's own for x86-64."""
    if arch == "x86_64":
        return BUSYBOX
    from .debian import foreign_busybox
    return foreign_busybox(arch)


def build_initramfs(dest: Path, extra: Sequence[Path] = (), init: str = INIT,
                    files: Optional[Dict[str, Path]] = None, arch: str = "x86_64") -> Path:
    """Write a gzip'd newc cpio with static busybox (of ``arch``), ``init``
    (its ``@CHANNEL@``: that machine's command channel), ``extra`` files in
    /lib and ``files`` (``{path inside: host file}``)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "lib", "mnt"):
            (root / d).mkdir()
        shutil.copy(busybox(arch), root / "bin" / "busybox")
        (root / "init").write_text(init.replace("@CHANNEL@", MACHINES[arch].channel))
        (root / "init").chmod(0o755)
        for f in extra:
            shutil.copy(f, root / "lib" / Path(f).name)
        for inside, src in (files or {}).items():
            (root / inside).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / inside)
        names = subprocess.run(["find", ".", "-print0"], cwd=root, check=True,
                               capture_output=True).stdout
        cpio = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet",
                               "--owner=0:0"], cwd=root, input=names, check=True,
                              capture_output=True).stdout
    dest.write_bytes(gzip.compress(cpio, 6, mtime=0))
    return dest


class QMP:
    """A minimal synchronous QMP client (events are collected, not interpreted)."""

    def __init__(self, path: Path, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.file = self.sock.makefile("rw")
        self.events: List[dict] = []
        json.loads(self.file.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, cmd: str, **arguments: Any) -> Any:
        msg: Dict[str, Any] = {"execute": cmd}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError(f"QMP closed during {cmd}")
            reply = json.loads(line)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {cmd}: {reply['error'].get('desc')}")
            return reply.get("return")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Guest:
    """One QEMU/TCG guest.  Use as a context manager."""

    def __init__(self, bzimage: Path, initramfs: Path, workdir: Path,
                 cmdline: str = "", mem_mb: int = 1024, nodes: int = 2,
                 maxmem_gb: int = 8, slots: int = 4, smp: int = 2, extra_qmp: int = 0,
                 cpu: Optional[str] = None, machine_opts: str = "", ram_opts: str = "",
                 virtio_mem: Sequence[Dict[str, Any]] = (), arch: str = "x86_64"):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.console = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.tool_qmp_path = workdir / "qmp-tool.sock"
        self.cmd_path = workdir / "cmd.sock"
        #: More untouched QMP sockets, one per further tool.
        self.extra_qmp_paths = [workdir / f"qmp-tool{i + 2}.sock" for i in range(extra_qmp)]
        for p in (self.qmp_path, self.tool_qmp_path, self.cmd_path, *self.extra_qmp_paths):
            if p.exists():
                p.unlink()
        per_node = mem_mb // nodes
        self.arch = arch
        if arch == "arm64":
            shutil.copy(AAVMF_VARS, workdir / "efivars.fd")
        m = MACHINES[arch]
        argv = [
            # machine_opts: more machine properties, e.g. ",max-ram-below-4g=1G";
            # ram_opts: more boot RAM backend properties, e.g. ",reserve=off"
            # (a guest far larger than the host, of which it touches little).
            m.qemu, "-machine", f"{m.machine}{machine_opts}", "-accel", "tcg",
            *[a.replace("{vars}", str(workdir / "efivars.fd")) for a in m.extra],
            "-smp", str(smp), "-m", f"{mem_mb}M,slots={slots},maxmem={maxmem_gb}G",
            "-kernel", str(bzimage), "-initrd", str(initramfs),
            "-append", f"console={m.console} nokaslr panic=-1 {cmdline}".strip(),
            "-display", "none", "-no-reboot",
            "-serial", f"file:{self.console}",
            *[a.replace("{path}", str(self.cmd_path)) for a in m.channel_args],
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-qmp", f"unix:{self.tool_qmp_path},server=on,wait=off",
        ]
        if m.vmcoreinfo_device:
            argv += ["-device", "vmcoreinfo"]
        for p in self.extra_qmp_paths:
            argv += ["-qmp", f"unix:{p},server=on,wait=off"]
        if cpu:  # e.g. "max": user space built for x86-64-v2 (numpy 2) needs SSE4.2
            argv += ["-cpu", cpu]
        for n in range(nodes):
            argv += ["-object", f"memory-backend-ram,id=ram{n},size={per_node}M{ram_opts}",
                     "-numa", f"node,nodeid={n},memdev=ram{n}"
                     + (f",cpus={n}" if n < smp else "")]
        self.argv = argv
        self.proc: Optional[subprocess.Popen] = None
        self.dimms: Dict[str, Dict[str, Any]] = {}
        for dev in virtio_mem:  # add_virtio_mem()'s arguments
            self.add_virtio_mem(**dev)

    def __enter__(self) -> "Guest":
        log("boot: " + " ".join(self.argv))
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=open(self.workdir / "qemu.log", "wb"),
                                     stderr=subprocess.STDOUT)
        self.qmp = QMP(self.qmp_path)
        self._connect_channel()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.qmp.execute("quit")
            except Exception:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _connect_channel(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.chan = socket.socket(socket.AF_UNIX)
                self.chan.connect(str(self.cmd_path))
                break
            except OSError:
                self.chan.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("guest command channel never appeared") from None
                time.sleep(0.1)
        self.chan.settimeout(timeout)
        self._buf = bytearray()
        self._read_until(b"@@READY\n", deadline)

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        # Search only what arrived since the last look (a dump streamed over
        # the serial port comes in many small pieces: rescanning the whole
        # buffer each time is quadratic).
        seen = 0
        while self._buf.find(marker, seen) < 0:
            seen = max(0, len(self._buf) - len(marker) + 1)
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"guest died; console tail:\n{self.console_tail()}")
            self.chan.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                raise RuntimeError(
                    f"guest timed out; console tail:\n{self.console_tail()}") from None
            if not data:
                raise RuntimeError("guest channel closed")
            self._buf += data
        out, _, rest = self._buf.partition(marker)
        self._buf = bytearray(rest)
        return bytes(out)

    def console_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def sh(self, command: str, check: bool = True, timeout: float = 300.0) -> str:
        """Run one shell command line in the guest; return its output."""
        assert "\n" not in command
        self.chan.sendall(command.encode() + b"\n")
        deadline = time.monotonic() + timeout
        out = self._read_until(b"@@DONE ", deadline)
        rc_line = self._read_until(b"\n", deadline)
        rc = int(rc_line.strip() or b"0")
        text = out.decode(errors="replace")
        if check and rc != 0:
            raise RuntimeError(f"guest command failed ({rc}): {command}\n{text}")
        return text

    # --- memory devices over QMP -------------------------------------------------

    def plug(self, dimm_id: str, size_mb: int, node: int) -> Dict[str, Any]:
        self.qmp.execute("object-add", **{"qom-type": "memory-backend-ram",
                                          "id": f"mem-{dimm_id}", "size": size_mb << 20})
        self.qmp.execute("device_add", driver="pc-dimm", id=dimm_id,
                         memdev=f"mem-{dimm_id}", node=node)
        info = self.memory_devices()[dimm_id]
        self.dimms[dimm_id] = info
        return info

    def unplug(self, dimm_id: str, timeout: float = 120.0) -> None:
        self.qmp.execute("device_del", id=dimm_id)
        deadline = time.monotonic() + timeout
        while dimm_id in self.memory_devices():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dimm_id} was not released by the guest")
            time.sleep(0.5)
        self.qmp.execute("object-del", id=f"mem-{dimm_id}")
        self.dimms.pop(dimm_id, None)

    def memory_devices(self) -> Dict[str, Dict[str, Any]]:
        out = {}
        for dev in self.qmp.execute("query-memory-devices"):
            d = dev["data"]
            if dev.get("type") == "virtio-mem":
                # addr/size: the device's whole region (its blocks); what the
                # guest plugged of it is plugged_size.
                out[d["id"]] = {"id": d["id"], "type": "virtio-mem", "addr": d["memaddr"],
                                "size": d["max-size"], "node": d["node"],
                                "plugged_size": d["size"],
                                "requested_size": d["requested-size"],
                                "block_size": d["block-size"]}
                continue
            out[d["id"]] = {"id": d["id"], "addr": d["addr"], "size": d["size"],
                            "node": d["node"], "slot": d["slot"]}
        return out

    # --- virtio-mem ---------------------------------------------------------------

    def add_virtio_mem(self, dev_id: str, size_mb: int, node: int, block_size_mb: int = 2,
                       requested_mb: int = 0) -> None:
        """A virtio-mem-pci device of ``size_mb`` on ``node``, given on the
        command line (call before booting); resize it with resize_virtio_mem."""
        assert self.proc is None, "add_virtio_mem before the guest boots"
        self.argv += ["-object", f"memory-backend-ram,id=mem-{dev_id},size={size_mb}M",
                      "-device", f"virtio-mem-pci,id={dev_id},memdev=mem-{dev_id},node={node},"
                      f"block-size={block_size_mb}M,requested-size={requested_mb}M"]

    def resize_virtio_mem(self, dev_id: str, requested_mb: int, timeout: float = 120.0
                          ) -> Dict[str, Any]:
        """Ask the guest to (un)plug to ``requested_mb`` and wait until the
        device says it has."""
        self.qmp.execute("qom-set", path=f"/machine/peripheral/{dev_id}",
                         property="requested-size", value=requested_mb << 20)
        deadline = time.monotonic() + timeout
        while True:
            info = self.memory_devices()[dev_id]
            if info["plugged_size"] == info["requested_size"] == requested_mb << 20:
                self.dimms[dev_id] = info
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dev_id}: plugged {info['plugged_size']} of "
                                   f"{requested_mb << 20} bytes")
            time.sleep(0.5)

    def dump(self, path: Path, fmt: str = "kdump-zlib") -> None:
        if path.exists():
            path.unlink()
        self.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{path}",
                         format=fmt)
