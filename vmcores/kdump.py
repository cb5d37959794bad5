"""The kernel's own crash-dump path: kexec -p, a panic, makedumpfile in the capture kernel.

QEMU's ``dump-guest-memory`` snapshots are what a hypervisor sees.  The dumps
that reach triage come from kdump instead: the crashed kernel jumps to a
capture kernel loaded with ``kexec -p`` into memory reserved by
``crashkernel=``, and that kernel's userspace writes ``/proc/vmcore`` with
makedumpfile.  This module does exactly that in the factory's guest, with
Debian's own binaries (kexec-tools and makedumpfile, copied with the shared
libraries ``ldd`` finds):

1. the first kernel boots with ``crashkernel=`` and an initramfs that
   carries ``kexec``, the kernel image and the capture initramfs;
2. after the scenario (and after the ground truth is read from the guest),
   ``kexec -p`` loads the capture kernel with the scenario's capture command
   line, and PID 1 exits: "Attempted to kill init!", panic, crash_kexec;
3. the capture kernel's ``/init`` (:data:`CAPTURE_INIT`) records which memory
   blocks it sees online, optionally fills memory the way a distribution's
   capture userspace uses it, and streams ``makedumpfile -F -c -d LEVEL
   /proc/vmcore`` (flattened) base64-encoded over the command serial port;
4. the host decodes it and rebuilds the dump with ``makedumpfile -R``.

No disk or network driver is needed in the tiny kernels: the serial port
that carries the factory's commands carries the dump.
"""

import base64
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterable

from .guest import Guest, build_initramfs
from .paths import log

KEXEC = Path("/usr/sbin/kexec")
MAKEDUMPFILE = Path("/usr/bin/makedumpfile")

#: What Debian's kdump-tools puts on the capture kernel's command line
#: (KDUMP_CMDLINE_APPEND), less the systemd unit; a scenario adds to it
#: (``acpi_no_memhotplug``, as RHEL's kdump does, or not).
DEBIAN_CAPTURE_CMDLINE = "reset_devices nr_cpus=1 irqpoll usbcore.nousb"

CAPTURE_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /tmp
while [ ! -e /dev/ttyS1 ]; do sleep 0.1; done
stty -F /dev/ttyS1 raw -echo -icrnl -onlcr -hupcl 2>/dev/null
exec 3>/dev/ttyS1
# Let ACPI finish adding (and, by its default, onlining) hot-plugged memory.
sleep 3
echo "@@CAPTURE-ONLINE $(cd /sys/devices/system/memory && for d in memory[0-9]*; do [ "$(cat $d/state)" = online ] && echo -n "${d#memory},"; done)" >&3
if [ "@FILL_MB@" -gt 0 ]; then
  # What a distribution's capture userspace does with the memory it has:
  # tmpfs, page cache, services.  Pages come from the highest zone first:
  # the hot-plugged memory this kernel onlined.
  dd if=/dev/zero of=/tmp/fill bs=1M count=@FILL_MB@ 2>/dev/null
  echo "@@CAPTURE-FILL $(du -m /tmp/fill | cut -f1)" >&3
fi
echo "@@KDUMP-BEGIN" >&3
{ makedumpfile -F -c -d @LEVEL@ /proc/vmcore 2>/tmp/makedumpfile.log; echo $? > /tmp/rc; } | base64 >&3
echo "" >&3
echo "@@KDUMP-END $(cat /tmp/rc)" >&3
tail -5 /tmp/makedumpfile.log > /dev/console
sync
poweroff -f
"""


def _with_libs(binaries: Iterable[Path]) -> Dict[str, Path]:
    """``{path in the initramfs: host file}`` for ``binaries`` and every
    shared library ``ldd`` finds for them, at the same paths."""
    out: Dict[str, Path] = {}
    for b in binaries:
        if not b.exists():
            raise RuntimeError(f"{b} is missing: apt-get install kexec-tools makedumpfile")
        out[str(b).lstrip("/")] = b
        text = subprocess.run(["ldd", str(b)], capture_output=True, text=True,
                              check=True).stdout
        for m in re.finditer(r"(/\S+)\s+\(0x", text):
            lib = Path(m.group(1))
            out[str(lib).lstrip("/")] = lib.resolve()
    return out


def capture_initramfs(dest: Path, level: int, fill_mb: int) -> Path:
    init = CAPTURE_INIT.replace("@LEVEL@", str(level)).replace("@FILL_MB@", str(fill_mb))
    return build_initramfs(dest, init=init, files=_with_libs([MAKEDUMPFILE]))


def first_kernel_files(bzimage: Path, capture: Path) -> Dict[str, Path]:
    """What the first kernel's initramfs carries for kdump."""
    files = _with_libs([KEXEC])
    files["boot/bzImage"] = bzimage
    files["boot/capture.cpio.gz"] = capture
    return files


def load_capture(g: Guest, capture_cmdline: str) -> str:
    """``kexec -p`` the capture kernel (before the ground truth is read, so
    that the truth describes the kernel as it crashed); return its command
    line."""
    append = f"console=ttyS0 nokaslr {DEBIAN_CAPTURE_CMDLINE} {capture_cmdline}".strip()
    g.sh(f'{KEXEC} -p /boot/bzImage --initrd=/boot/capture.cpio.gz --append="{append}"')
    if g.sh("cat /sys/kernel/kexec_crash_loaded").strip() != "1":
        raise RuntimeError("kexec -p did not load the capture kernel")
    g.sh("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true")
    return append


def crash_and_capture(g: Guest, append: str, flat: Path,
                      timeout: float = 1800.0) -> Dict[str, Any]:
    """Crash the guest into the loaded capture kernel, receive the flattened
    dump into ``flat``; return what the capture kernel reported."""
    log(f"crashing the guest into the capture kernel ({append})")
    t0 = time.monotonic()
    g.chan.sendall(b"@@CRASH\n")
    deadline = time.monotonic() + timeout
    info: Dict[str, Any] = {"capture_cmdline": append}
    g._read_until(b"@@CAPTURE-ONLINE ", deadline)
    online = g._read_until(b"\n", deadline).decode().strip().strip(",")
    info["capture_onlined_blocks"] = [int(x) for x in online.split(",") if x]
    head = g._read_until(b"@@KDUMP-BEGIN", deadline)
    m = re.search(rb"@@CAPTURE-FILL (\d+)", head)
    if m:
        info["capture_fill_mb"] = int(m.group(1))
    body = g._read_until(b"@@KDUMP-END ", deadline)
    rc = int(g._read_until(b"\n", deadline).strip() or b"-1")
    if rc != 0:
        raise RuntimeError(f"makedumpfile in the capture kernel failed ({rc}); console:\n"
                           + g.console_tail())
    data = base64.b64decode(re.sub(rb"\s+", b"", body))
    flat.write_bytes(data)
    info["capture_seconds"] = round(time.monotonic() - t0, 1)
    log(f"received {len(data) / 1e6:.1f} MB of flattened dump in {info['capture_seconds']} s")
    return info


def rebuild(flat: Path, out: Path) -> None:
    """``makedumpfile -R``: the flattened stream back into a kdump-compressed file."""
    if out.exists():
        out.unlink()
    with open(flat, "rb") as f:
        subprocess.run(["makedumpfile", "-R", str(out)], stdin=f, check=True,
                       capture_output=True)
