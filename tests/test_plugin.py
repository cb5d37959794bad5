"""The %vmemmap drgn command, through drgn's own command framework and CLI."""

import json
import subprocess
import sys

import pytest
from drgn.commands import run_command

from drgn_vmemmap.target import decompressed

from conftest import FIXTURES, fixture_program, manifests, vmlinux_for

MANIFESTS = manifests()


def drgn_script(name, code):
    """Run ``code`` under the real drgn CLI on a fixture (plugins load as for a user)."""
    m = MANIFESTS[name]
    # drgn opens the kdump file itself: an .xz fixture through the cache.
    vmcore = decompressed(str(FIXTURES / m["dump"]["file"]))
    return subprocess.run(
        [sys.executable, "-m", "drgn", "-q", "-c", vmcore,
         "-s", vmlinux_for(m), "-e", code],
        capture_output=True, text=True, timeout=300)


def test_command_registered_by_plugin():
    proc = drgn_script("6.12-hotplug-basic",
                       "from drgn.commands import run_command\n"
                       "rc = run_command(prog, 'vmemmap ranges --format json')\n"
                       "print('rc', rc)")
    assert proc.returncode == 0, proc.stderr
    out, _, rc = proc.stdout.rpartition("rc ")
    assert rc.strip() == "0"
    ranges = json.loads(out)
    truth = MANIFESTS["6.12-hotplug-basic"]["truth"]["self_hosted"]
    assert [r["start_pfn"] for r in ranges] == [r["start_pfn"] for r in truth]


def test_check_returns_exit_status(capsys):
    prog = fixture_program("6.12-faults")
    assert run_command(prog, "vmemmap check --format json", globals={}) == 1
    doc = json.loads(capsys.readouterr().out)
    assert {v["rule"] for v in doc["violations"]} >= {"vmemmap-unmarked", "marker-stray"}
    prog = fixture_program("6.12-hotplug-basic")
    assert run_command(prog, "vmemmap check --format table", globals={}) == 0
    assert "CONSISTENT" in capsys.readouterr().out


@pytest.mark.parametrize("sub", ["check", "ranges", "blocks", "sections", "features",
                                 "explain 0x100000"])
def test_drgn_code_runs(sub, capsys):
    """--drgn prints helper code; that code must run and print something."""
    prog = fixture_program("7.2-hotplug-basic")
    assert run_command(prog, f"vmemmap {sub} --drgn", globals={}) == 0
    code = capsys.readouterr().out
    assert "drgn_vmemmap" in code
    exec(compile(code, "<--drgn>", "exec"), {"prog": prog})
    assert capsys.readouterr().out.strip()


def test_bad_arguments_raise_command_error():
    from drgn.commands import CommandError
    prog = fixture_program("6.12-hotplug-basic")
    with pytest.raises(CommandError):
        run_command(prog, "vmemmap frobnicate", globals={})


def test_subcommands_declared_once(capsys):
    """The CLI's subcommands and %vmemmap's are both SUBCOMMANDS (minus the
    CLI-only triage), with the same arguments; each %vmemmap one has --drgn
    code, and the explain code names the pfn given."""
    import argparse

    from drgn_vmemmap.cli import build_parser
    from drgn_vmemmap.subcommands import SUBCOMMANDS

    def choices(parser):
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices

    cli, drgn = choices(build_parser()), choices(build_parser("%vmemmap", for_drgn=True))
    assert list(cli) == [c.name for c in SUBCOMMANDS]
    assert list(drgn) == [c.name for c in SUBCOMMANDS if c.drgn_code]
    assert "triage" in cli and "triage" not in drgn
    for c in SUBCOMMANDS:
        for a in c.arguments:
            dest = a.options.get("dest") or a.flags[-1].lstrip("-").replace("-", "_")
            assert dest in {x.dest for x in cli[c.name]._actions}, (c.name, dest)
            if c.drgn_code:
                assert dest in {x.dest for x in drgn[c.name]._actions}, (c.name, dest)
    prog = fixture_program("7.2-hotplug-basic")
    capsys.readouterr()
    assert run_command(prog, "vmemmap explain 0x100abc --drgn", globals={}) == 0
    assert "explain_pfn(prog, 0x100abc)" in capsys.readouterr().out
