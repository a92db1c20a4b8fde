"""The command-line entry point's own behaviour."""
import subprocess
import sys


def test_output_cut_short_by_the_reader_ends_quietly():
    """`tuckerref info | head -1`: the closed pipe gives no traceback, only the shell's SIGPIPE status."""
    proc = subprocess.Popen([sys.executable, "-m", "tuckerref.cli", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert first.startswith(b"tuckerref ") and "Traceback" not in err, err
