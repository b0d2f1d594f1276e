"""``ctxledger checkpoint`` keygen, sign and verify, ``project`` keeping the log's
Merkle tree, and ``export --sign-with`` / ``verify-export --public-key``, run as an
operator runs them on a real SQLite file and a real PostgreSQL schema."""

import base64
import re
import stat
import subprocess
from pathlib import Path

import pytest

from ledger import ContextLedger, verify_event_proof
from tests.helpers import chat, cli_on, execute_sql, one_line_error
from tests.tampering import delete_event

ORIGIN = "example.com/ctxledger/cli"
VERIFIER_KEY = re.compile(re.escape(ORIGIN) + r"\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*\n")


def _keygen(url: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    return cli_on(
        "checkpoint", "keygen", "--origin", ORIGIN, "--out", str(prefix), url=url
    )


@pytest.fixture
def keys(sqlite_url: str, tmp_path: Path) -> tuple[Path, Path]:
    """A key pair written by ``checkpoint keygen``: PREFIX.key and PREFIX.pub."""
    done = _keygen(sqlite_url, tmp_path / "log")
    assert done.returncode == 0, done.stderr
    return tmp_path / "log.key", tmp_path / "log.pub"


@pytest.fixture
def url(durable_url: str) -> str:
    """A ledger with a few users' events."""
    with ContextLedger.open(durable_url) as ledger:
        chat(ledger, users=3, messages=4)
    return durable_url


@pytest.fixture
def sqlite_ledger(sqlite_url: str) -> str:
    """A SQLite ledger with a few users' events: where the refusals of hostile
    files are checked (reading a note or key is the same on every backend)."""
    with ContextLedger.open(sqlite_url) as ledger:
        chat(ledger, users=3, messages=4)
    return sqlite_url


def _events(url: str) -> int:
    ((count,),) = execute_sql(url, "SELECT COUNT(*) FROM {events}")
    return int(count)


def _last_version(url: str, user: str) -> int:
    with ContextLedger.open(url) as ledger:
        return ledger.history(user)[-1].version


def _sign(url: str, key: Path, out: Path) -> subprocess.CompletedProcess[str]:
    done = cli_on("checkpoint", "sign", "--key", str(key), "--out", str(out), url=url)
    assert done.returncode == 0, done.stderr
    return done


def _verify(url: str, note: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return cli_on(
        "checkpoint", "verify", str(note), "--public-key", str(public), url=url
    )


def _export(url: str, user: str, out: Path, key: Path) -> Path:
    done = cli_on("export", user, "--out", str(out), "--sign-with", str(key), url=url)
    assert done.returncode == 0, done.stderr
    return out


def _verify_export(
    url: str, path: Path, public: Path
) -> subprocess.CompletedProcess[str]:
    return cli_on("verify-export", str(path), "--public-key", str(public), url=url)


# keygen


def test_keygen_writes_a_key_only_its_owner_reads_and_a_verifier_key_note(
    keys: tuple[Path, Path],
) -> None:
    private, public = keys

    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    text = public.read_text(encoding="utf-8")
    assert VERIFIER_KEY.fullmatch(text), text
    key = base64.b64decode(text.strip().split("+", 2)[2], validate=True)
    assert (len(key), key[0]) == (33, 1)  # Ed25519's algorithm byte, then the key


def test_keygen_refuses_to_overwrite_a_key(
    sqlite_url: str, keys: tuple[Path, Path]
) -> None:
    before = [path.read_bytes() for path in keys]

    done = _keygen(sqlite_url, keys[0].with_suffix(""))

    assert done.returncode == 1
    assert "never overwritten" in one_line_error(done, "CheckpointError")
    assert [path.read_bytes() for path in keys] == before


# sign and verify


def test_sign_prints_the_note_writes_it_and_keeps_it(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "checkpoint.txt"

    done = _sign(url, keys[0], out)

    assert done.stdout == out.read_text(encoding="utf-8")
    origin, size, _root, blank, signature = done.stdout.splitlines()[:5]
    assert (origin, int(size), blank) == (ORIGIN, _events(url), "")
    assert signature.startswith(f"\u2014 {ORIGIN} ")
    with ContextLedger.open(url) as ledger:
        assert ledger.latest_checkpoint() == done.stdout


def test_verify_exits_0_on_an_intact_log(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    note = tmp_path / "checkpoint.txt"
    _sign(url, keys[0], note)
    with ContextLedger.open(url) as ledger:
        chat(ledger, users=2, messages=1)

    done = _verify(url, note, keys[1])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "extends the checkpoint" in done.stdout


def test_verify_exits_1_naming_an_event_deleted_with_sql(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    note = tmp_path / "checkpoint.txt"
    _sign(url, keys[0], note)
    last = _last_version(url, "u1")
    delete_event(url, "u1", last)

    done = _verify(url, note, keys[1])

    assert done.returncode == 1
    assert "NOT EXTENDED" in done.stdout
    assert f"(user 'u1', version {last}," in done.stdout
    assert "missing" in done.stdout


# project keeps the tree


def test_project_catches_the_tree_up_to_every_event(url: str) -> None:
    done = cli_on("project", url=url)

    assert done.returncode == 0, done.stderr
    ((size, leaves),) = execute_sql(
        url,
        "SELECT size, (SELECT COUNT(*) FROM ctxledger_tree_leaves) FROM ctxledger_tree",
    )
    assert int(size) == int(leaves) == _events(url)


# exports proved in the signed log


def test_verify_export_with_the_public_key_exits_0_for_an_intact_export(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    path = _export(url, "u0", tmp_path / "u0.jsonl", keys[0])

    done = _verify_export(url, path, keys[1])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "each event proved in the signed log" in done.stdout


def test_verify_export_with_the_public_key_exits_1_for_a_truncated_user(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _sign(url, keys[0], tmp_path / "checkpoint.txt")
    last = _last_version(url, "u2")
    delete_event(url, "u2", last)
    path = _export(url, "u2", tmp_path / "u2.jsonl", keys[0])

    done = _verify_export(url, path, keys[1])

    assert done.returncode == 1
    assert f"(version {last}): missing" in done.stdout


# hostile input


def _note_signed_by_another_key(url: str, tmp_path: Path) -> Path:
    other, note = tmp_path / "other", tmp_path / "other.txt"
    assert _keygen(url, other).returncode == 0
    _sign(url, other.with_suffix(".key"), note)
    return note


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a note\n",
        f"{ORIGIN}\n12\nbm90IGEgaGFzaA==\n\n\u2014 {ORIGIN} AAAA\n",
        "\xff\xfe binary \x00\n",
    ],
    ids=["empty", "plain text", "bad signature line", "binary"],
)
def test_verify_refuses_a_malformed_note_file_in_one_line(
    sqlite_ledger: str, keys: tuple[Path, Path], tmp_path: Path, text: str
) -> None:
    url = sqlite_ledger
    note = tmp_path / "note.txt"
    note.write_text(text, encoding="utf-8", errors="surrogateescape")

    done = _verify(url, note, keys[1])

    assert done.returncode == 1
    one_line_error(done, "CheckpointError")


def test_verify_refuses_a_note_signed_by_another_key_in_one_line(
    sqlite_ledger: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    url = sqlite_ledger
    note = _note_signed_by_another_key(url, tmp_path)

    done = _verify(url, note, keys[1])

    assert done.returncode == 1
    assert "no signature by key" in one_line_error(done, "CheckpointError")


@pytest.mark.parametrize("command", ["sign", "verify", "verify-export"])
def test_a_key_file_that_is_not_a_key_is_refused_in_one_line(
    sqlite_ledger: str, keys: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    url = sqlite_ledger
    note = tmp_path / "checkpoint.txt"
    _sign(url, keys[0], note)
    path = _export(url, "u0", tmp_path / "u0.jsonl", keys[0])
    junk = tmp_path / "junk.key"
    junk.write_text("this is not a key\n", encoding="utf-8")
    arguments = {
        "sign": ("checkpoint", "sign", "--key", str(junk)),
        "verify": ("checkpoint", "verify", str(note), "--public-key", str(junk)),
        "verify-export": ("verify-export", str(path), "--public-key", str(junk)),
    }[command]

    done = cli_on(*arguments, url=url)

    assert done.returncode == 1
    one_line_error(done, "CheckpointError")


def test_the_verifier_key_given_as_the_signer_key_is_refused_in_one_line(
    sqlite_ledger: str, keys: tuple[Path, Path]
) -> None:
    done = cli_on("checkpoint", "sign", "--key", str(keys[1]), url=sqlite_ledger)

    assert done.returncode == 1
    one_line_error(done, "CheckpointError")


# prove, and verify-export --checkpoint


def test_prove_prints_a_tlog_proof_of_one_event_that_verifies_offline(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _sign(url, keys[0], tmp_path / "checkpoint.txt")

    done = cli_on("checkpoint", "prove", "u1", "2", url=url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("c2sp.org/tlog-proof@v1\nindex ")
    with ContextLedger.open(url) as ledger:
        event = ledger.history("u1")[1]
    assert verify_event_proof(done.stdout, event, keys[1])


def test_prove_before_any_checkpoint_is_refused_in_one_line(url: str) -> None:
    done = cli_on("checkpoint", "prove", "u1", "1", url=url)

    assert done.returncode == 1
    assert "no signed checkpoint covers" in one_line_error(done, "CheckpointError")


def test_verify_export_with_a_newer_trusted_checkpoint_exits_1(
    url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    older = tmp_path / "older.txt"
    _sign(url, keys[0], older)
    path = cli_on("export", "u0", "--out", str(tmp_path / "u0.jsonl"), url=url)
    assert path.returncode == 0, path.stderr
    with ContextLedger.open(url) as ledger:
        ledger.open_context("u2", "later")
    newer = tmp_path / "newer.txt"
    _sign(url, keys[0], newer)
    arguments = ("verify-export", str(tmp_path / "u0.jsonl"), "--public-key")

    with_older = cli_on(*arguments, str(keys[1]), "--checkpoint", str(older), url=url)
    with_newer = cli_on(*arguments, str(keys[1]), "--checkpoint", str(newer), url=url)

    assert with_older.returncode == 0, with_older.stdout
    assert with_newer.returncode == 1
    assert "unproven" in with_newer.stdout
