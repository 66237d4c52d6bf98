"""cpo.io: files others can read (the umask), byte-order marks, duplicate JSON keys, one JSON/JSONL rule,
and output/input paths named for what they are."""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from cpo.cli import duplicate_override_keys
from cpo.io import (
    DataError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_lines,
    atomic_write_text,
    check_readable_file,
    check_writable,
    iter_json_list,
    iter_json_records,
    iter_jsonl,
    json_layout,
    read_lines,
)

WRITERS = {
    "bytes": lambda p: atomic_write_bytes(p, b"x"),
    "text": lambda p: atomic_write_text(p, "x"),
    "json": lambda p: atomic_write_json(p, {"a": 1}),
    "lines": lambda p: atomic_write_lines(p, ["a", "b"]),
    "jsonl": lambda p: atomic_write_jsonl(p, [{"a": 1}]),
}


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writers_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    for name, write in WRITERS.items():
        path = tmp_path / f"{name}.out"
        write(path)
        assert stat.S_IMODE(path.stat().st_mode) == expected, name
        plain = tmp_path / f"{name}.plain"
        plain.write_bytes(b"x")  # what open() gives, the reference
        assert stat.S_IMODE(plain.stat().st_mode) == expected
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_writer_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "results.json"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_json(path, {"new": True})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and json.loads(path.read_text()) == {"new": True}


# --------------------------------------------------------------------------- byte-order marks
def test_bom_is_removed_with_a_warning(tmp_path, caplog):
    text = tmp_path / "hyp.en"
    text.write_bytes(b"\xef\xbb\xbfHello world\nGood day\n")
    with caplog.at_level(logging.WARNING, logger="cpo.io"):
        assert read_lines(text) == ["Hello world", "Good day"]
    assert f"{text}: removed a UTF-8 byte-order mark" in caplog.text

    jl = tmp_path / "p.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"source": "a"}).encode() + b"\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpo.io"):
        assert list(iter_jsonl(jl)) == [(1, {"source": "a"})]
    assert "byte-order mark" in caplog.text

    alma = tmp_path / "test.de-en.json"
    alma.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"translation": {"de": "a", "en": "b"}}]).encode())
    assert json_layout(alma) == "list"
    assert [v for _, _, v in iter_json_list(alma)] == [{"translation": {"de": "a", "en": "b"}}]


def test_bom_no_longer_lowers_bleu(tmp_path):
    """The issue's measurement: a BOM on a hypothesis file made a perfect output score 94.75 BLEU."""
    from sacrebleu.metrics import BLEU

    refs = ["The goods cost less than 20 euros.", "The fee is 40% of the value."]
    hyp = tmp_path / "hyp.en"
    hyp.write_bytes(b"\xef\xbb\xbf" + "".join(r + "\n" for r in refs).encode())
    raw = hyp.read_bytes().decode("utf-8").splitlines()  # what a naive reader sees
    assert BLEU().corpus_score(raw, [refs]).score < 100
    assert BLEU().corpus_score(read_lines(hyp), [refs]).score == pytest.approx(100.0)


# --------------------------------------------------------------------------- duplicate keys
def test_duplicate_keys_are_errors_naming_file_and_line(tmp_path):
    jl = tmp_path / "pairs.jsonl"
    good = {"source": "a", "chosen": "b", "rejected": "c", "src_lang": "de", "tgt_lang": "en"}
    jl.write_text(json.dumps(good) + "\n\n" + '{"source": "a", "chosen": "b", "chosen": "x", "rejected": "c"}\n')
    with pytest.raises(DataError, match=rf"{jl}:3: the key 'chosen' appears twice"):
        list(iter_jsonl(jl))
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"translation": {"de": "a", "en": "b", "de": "c"}}\n')
    with pytest.raises(DataError, match=r"nested\.jsonl:1: the key 'de' appears twice"):
        list(iter_jsonl(nested))
    # training rows go through the same reader
    from cpo.data import read_preference_jsonl

    with pytest.raises(DataError, match=r"pairs\.jsonl:3: the key 'chosen'"):
        read_preference_jsonl(jl)

    alma = tmp_path / "test.de-en.json"
    alma.write_text('[\n  {"translation": {"de": "a", "en": "b"}},\n'
                    '  {"translation": {"de": "a",\n    "en": "b", "en": "c"}}\n]\n')
    with pytest.raises(DataError, match=rf"{alma}:3 \(row 2\): the key 'en' appears twice"):
        list(iter_json_list(alma))


def test_json_list_rows_name_their_lines_and_malformed_json(tmp_path):
    f = tmp_path / "rows.json"
    f.write_text('[{"a": 1},\n\n {"a": 2}, {"a": 3}\n]\n')
    assert [(line, row) for line, row, _ in iter_json_list(f)] == [(1, 1), (3, 2), (3, 3)]
    f.write_text('[{"a": 1},\n {"a": 2}\n {"a": 3}]')
    with pytest.raises(DataError, match=r"rows\.json:3: malformed JSON \(expected ',' or '\]' after row 2\)"):
        list(iter_json_list(f))
    f.write_text('[{"a": 1},\n {"a": }]')
    with pytest.raises(DataError, match=r"rows\.json:2: malformed JSON"):
        list(iter_json_list(f))
    f.write_text('[]')
    assert list(iter_json_list(f)) == []


def test_one_rule_for_json_and_json_lines(tmp_path):
    """The first character decides, whatever the suffix: hub .json files are often JSON Lines."""
    lines_json = tmp_path / "de-en.json"
    lines_json.write_text('{"a": 1}\n{"a": 2}\n')
    list_jsonl = tmp_path / "de-en.jsonl"
    list_jsonl.write_text('  [{"a": 1}, {"a": 2}]')
    assert (json_layout(lines_json), json_layout(list_jsonl)) == ("lines", "list")
    assert ([v for _, v in iter_json_records(lines_json)] == [v for _, v in iter_json_records(list_jsonl)]
            == [{"a": 1}, {"a": 2}])
    assert [w for w, _ in iter_json_records(list_jsonl)] == [f"{list_jsonl}:1 (row 1)", f"{list_jsonl}:1 (row 2)"]


def test_duplicate_keys_in_command_line_maps():
    assert "systems: the key 'gpt4' is given twice" in duplicate_override_keys(
        ["x=1", "systems={gpt4: a.en, gpt4: b.en}"]
    )
    assert "the key 'g'" in duplicate_override_keys(["+directions={de-en: {input: a, systems: {g: 1, g: 2}}}"])
    assert duplicate_override_keys(["systems={gpt4: a.en, alma: b.en}", "wmt22.systems=[a,a]", "x=1"]) is None


# --------------------------------------------------------------------------- paths named for what they are
def test_check_writable_says_what_the_path_is(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=r"output=.*folder: is a directory; give the path of a file"):
        check_writable(tmp_path / "folder", overwrite=True, key="output")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"file: exists; pass overwrite=true"):
        check_writable(tmp_path / "file", overwrite=False)
    assert check_writable(tmp_path / "file", overwrite=True) == tmp_path / "file"
    with pytest.raises(NotADirectoryError,
                       match=r"cannot create the folder .*file/sub: .*file is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.txt", overwrite=False)
    assert check_writable(tmp_path / "new" / "deeper" / "out.txt", overwrite=False)  # folders are created on writing
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_writable_refuses_a_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="permission denied"):
            check_writable(locked / "sub" / "out.txt", overwrite=False, key="output")
    finally:
        locked.chmod(0o755)


def test_readers_say_a_directory_is_a_directory(tmp_path):
    from cpo.mt.parallel import read_parallel

    with pytest.raises(IsADirectoryError, match=r"is a directory, not a file"):
        read_lines(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"input=.*: is a directory, not a file"):
        read_parallel(tmp_path, src_lang="de", tgt_lang="en", key="input")
    with pytest.raises(FileNotFoundError, match=r"nothere: no such file"):
        check_readable_file(tmp_path / "nothere")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"broken symbolic link"):
        check_readable_file(tmp_path / "link")


def test_zero_width_only_lines_are_empty(tmp_path):
    from cpo.mt.parallel import read_parallel

    src = tmp_path / "s.txt"
    src.write_text("Hallo\n\u200b \u200d\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.txt:2: empty source line"):
        read_parallel(src, src_lang="de", tgt_lang="en")
    with pytest.raises(DataError, match=r"s\.txt:2: empty line"):
        read_lines(src, allow_empty=False)


def test_an_unknown_language_in_a_jsonl_row_is_a_data_error_naming_the_line(tmp_path):
    from cpo.mt.parallel import read_parallel

    f = tmp_path / "in.jsonl"
    f.write_text('{"source": "a", "src_lang": "xx", "tgt_lang": "en"}\n')
    with pytest.raises(DataError, match=r"in\.jsonl:1.*unknown language code 'xx'"):
        read_parallel(f, "jsonl", None, None, references="ignore")


def test_empty_evaluation_files_are_a_data_error(tmp_path):
    from cpo.mt.evaluation import evaluate_files

    for name in ("s", "r", "h"):
        (tmp_path / name).write_text("")
    with pytest.raises(DataError, match="no lines"):
        evaluate_files(tmp_path / "s", tmp_path / "r", tmp_path / "h", "de", "en")
