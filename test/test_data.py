#!/usr/bin/env python3
"""Tests of the data-preparation scripts in dev/data/ (SPEC.md section 6 formats).

    python3 test/test_data.py

Needs numpy, tiktoken and the offline mirror (../shared/data beside the repo, or shared/data
inside it): a missing prerequisite fails the test that needs it, with the reason; nothing is skipped.
"""
import gzip
import lzma
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_SCRIPTS = REPO / "dev" / "data"
sys.path.insert(0, str(DATA_SCRIPTS))

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def modules():
    """data_common and text_files, or a clear failure."""
    try:
        import numpy  # noqa: F401
        import tiktoken  # noqa: F401
    except ImportError as e:
        raise AssertionError(f"prerequisite missing: {e} (pip install numpy tiktoken)")
    import data_common
    import text_files
    return data_common, text_files


def shared_file(name):
    dc, _ = modules()
    p = dc.find_shared_file(name)
    assert p is not None, (f"prerequisite missing: {name} not found in "
                           f"{' or '.join(str(d) for d in dc.SHARED_DATA_DIRS)}")
    return p


def encoder():
    dc, _ = modules()
    return dc.get_gpt2_encoding(shared_file("gpt2.tiktoken"), verbose=False)


def run_script(script, *args, expect_rc=0):
    r = subprocess.run([sys.executable, str(DATA_SCRIPTS / script), *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == expect_rc, f"{script} {args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def sample_text(tmp, nbytes=50_000):
    """The first ~50 KB of Tiny Shakespeare, cut after a line."""
    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:nbytes]
    text = text[:text.rindex("\n") + 1]
    path = Path(tmp) / "shakespeare_head.txt"
    path.write_text(text, encoding="utf-8")
    return text, path


def check_shard_file(path, ntok=None):
    """Header and size checked by hand (not through the reader under test); returns the tokens."""
    import numpy as np
    dc, _ = modules()
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == 20240520 and header[1] == 1, (path, header[:3])
    assert len(raw) == 1024 + 2 * header[2], (path, len(raw), header[2])
    assert not header[3:].any(), path
    if ntok is not None:
        assert header[2] == ntok, (path, header[2], ntok)
    tokens = dc.read_shard(path)
    assert len(tokens) == header[2] and tokens.dtype == np.uint16
    assert int(tokens.max()) <= 50256
    return tokens


def split_docs(tokens):
    """Documents of a token stream in which each document starts with EOT."""
    eot = [i for i, t in enumerate(tokens) if t == 50256] + [len(tokens)]
    assert len(tokens) == 0 or eot[0] == 0, "stream does not start with <|endoftext|>"
    return [tokens[a + 1:b] for a, b in zip(eot, eot[1:])]


# ----------------------------------------------------------------------------------------

@test
def tokenizer_table():
    import numpy as np
    dc, _ = modules()
    ranks = shared_file("gpt2.tiktoken")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpt2_tokenizer.bin"
        dc.write_gpt2_tokenizer(path, ranks)  # cross-checks every id against tiktoken
        raw = path.read_bytes()
        header = np.frombuffer(raw[:1024], dtype="<u4")
        assert list(header[:4]) == [20240328, 2, 50257, 50256], header[:4]
        assert not header[4:].any()
        table = dc.read_tokenizer(path)
        assert len(raw) == 1024 + sum(1 + len(b) for b in table)
        assert table[50256] == b"<|endoftext|>"
        assert table[464] == b"The" and table[198] == b"\n" and table[0] == b"!" and table[220] == b" "
        assert table[15496] == b"Hello" and table[995] == b" world"
        dc.check_token_bytes(table, encoder())
        # built from the ranks file alone: the same bytes when tiktoken cannot be imported
        path2 = Path(tmp) / "no_tiktoken.bin"
        code = ("import sys; sys.modules['tiktoken'] = None; sys.path.insert(0, sys.argv[1]); "
                "import data_common as dc; dc.write_gpt2_tokenizer(sys.argv[2], sys.argv[3])")
        r = subprocess.run([sys.executable, "-c", code, str(DATA_SCRIPTS), str(path2), str(ranks)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "NOT cross-checked" in r.stdout, r.stdout
        assert path2.read_bytes() == raw
        # the reader rejects a truncated table and a wrong magic
        (Path(tmp) / "short.bin").write_bytes(raw[:-1])
        bad = bytearray(raw)
        bad[0] ^= 1
        (Path(tmp) / "magic.bin").write_bytes(bytes(bad))
        for name in ("short.bin", "magic.bin"):
            try:
                dc.read_tokenizer(Path(tmp) / name)
            except ValueError:
                pass
            else:
                raise AssertionError(f"read_tokenizer accepted {name}")


@test
def encoder_known_ids():
    dc, _ = modules()
    enc = encoder()
    assert enc.n_vocab == 50257
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary("The") == [464]
    tokens, lengths = dc.encode_documents(["Hello world", "The <|endoftext|>"], enc)
    # a literal <|endoftext|> in the text stays text: only the document starts are EOT
    assert list(tokens[:4]) == [50256, 15496, 995, 50256], tokens
    assert list(tokens).count(50256) == 2 and list(lengths) == [3, len(tokens) - 3]
    assert enc.decode(list(tokens)) == "<|endoftext|>Hello world<|endoftext|>The <|endoftext|>"


@test
def shard_reader_rejects_bad_files():
    import numpy as np
    dc, _ = modules()
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good.bin"
        dc.write_shard(good, np.arange(1000, dtype=np.int64) * 50)
        assert not (Path(tmp) / "good.bin.tmp").exists()
        assert (check_shard_file(good, 1000) == np.arange(1000) * 50).all()
        raw = good.read_bytes()
        header = np.frombuffer(raw[:1024], dtype="<i4").copy()

        def variant(name, data):
            p = Path(tmp) / name
            p.write_bytes(data)
            return p

        wrong_magic, wrong_version, wrong_count = header.copy(), header.copy(), header.copy()
        wrong_magic[0] = 20240328
        wrong_version[1] = 2
        wrong_count[2] = 1001
        bad = [variant("truncated.bin", raw[:-2]), variant("odd.bin", raw[:-1]),
               variant("extra.bin", raw + b"\0\0"), variant("short_header.bin", raw[:1000]),
               variant("empty.bin", b""),
               variant("magic.bin", wrong_magic.tobytes() + raw[1024:]),
               variant("version.bin", wrong_version.tobytes() + raw[1024:]),
               variant("count.bin", wrong_count.tobytes() + raw[1024:])]
        for p in bad:
            try:
                dc.read_shard(p)
            except ValueError:
                pass
            else:
                raise AssertionError(f"read_shard accepted {p.name}")
        try:
            dc.write_shard(Path(tmp) / "overflow.bin", np.array([70000]))
        except AssertionError:
            pass
        else:
            raise AssertionError("write_shard accepted a token >= 2**16")


@test
def tinyshakespeare_script():
    dc, _ = modules()
    enc = encoder()
    with tempfile.TemporaryDirectory() as tmp:
        text, src = sample_text(tmp)
        out = Path(tmp) / "out"
        run_script("tinyshakespeare.py", "--input", src, "--out-dir", out, "--val-tokens", 4096,
                   "--tiktoken", shared_file("gpt2.tiktoken"))
        val = check_shard_file(out / "tinyshakespeare" / "tiny_shakespeare_val.bin", 4096)
        train = check_shard_file(out / "tinyshakespeare" / "tiny_shakespeare_train.bin")
        tokens = [int(t) for t in val] + [int(t) for t in train]
        # exactly llm.c's tokenization: an EOT before every blank-line-separated section
        llmc_text = "<|endoftext|>" + text.replace("\n\n", "\n\n<|endoftext|>")
        assert tokens == enc.encode(llmc_text, allowed_special={"<|endoftext|>"})
        # decoding with the written table (as the C trainer does) reproduces the text
        table = dc.read_tokenizer(out / "gpt2_tokenizer.bin")
        decoded = b"".join(table[t] for t in tokens).decode("utf-8")
        assert decoded == llmc_text
        assert decoded.replace("<|endoftext|>", "") == text
        assert len(train) > 4096


@test
def text_files_streaming_split_matches_whole_file():
    """Documents found reading in small pieces equal those found reading the file at once."""
    _, tf = modules()
    tricky = ("\n\n  \nfirst para\nline two\n\n\nsecond\n \t\n  indented third\n\n"
              "x\n\n\n\n" + "long line " * 50 + "\n\n\ny\n \n")
    with tempfile.TemporaryDirectory() as tmp:
        text, src = sample_text(tmp, 20_000)
        tricky_path = Path(tmp) / "tricky.txt"
        tricky_path.write_text(tricky)
        for path in (src, tricky_path):
            for sep in ("blank", "line", "file"):
                whole = list(tf.read_documents(path, tf.SEPARATORS[sep], read_chars=1 << 30))
                assert "".join(whole) == path.read_text()
                for k in (1, 2, 3, 7, 64, 1000):
                    assert list(tf.read_documents(path, tf.SEPARATORS[sep], read_chars=k)) == whole, (path, sep, k)
        docs = list(tf.read_documents(tricky_path, tf.SEPARATORS["blank"]))
        assert docs[1:4] == ["first para\nline two\n\n\n", "second\n \t\n", "  indented third\n\n"], docs
        assert docs[0] == "\n\n  \n"  # leading blank lines: whitespace-only, dropped by batches()
        docs = list(tf.read_documents(src, tf.SEPARATORS["blank"]))
        assert len(docs) > 50 and all(d.endswith("\n\n") and "\n\n" not in d[:-2] for d in docs[:-1])


@test
def text_files_long_documents_cut_at_line_ends():
    """A document longer than the cap leaves in pieces of at most cap characters that end at
    line ends (a longer line at the cap), and nothing is lost; cap 0 keeps it whole."""
    _, tf = modules()
    doc = "".join(f"line {i} " + "x" * (i % 23) + "\n" for i in range(400)) + "y" * 250 + "\nend"
    for cap in (0, 100, 64, 7, len(doc), len(doc) - 1):
        got = list(tf.pieces(doc, cap))
        assert "".join(got) == doc, cap
        if cap == 0 or cap >= len(doc):
            assert got == [doc], cap
            continue
        assert all(len(p) <= cap for p in got), cap
        for p, nxt in zip(got, got[1:]):  # a cut before a line end only where the line is too long
            assert p.endswith("\n") or ("\n" not in p and len(p) == cap), (cap, p, nxt)
    with tempfile.TemporaryDirectory() as tmp:
        text, src = sample_text(tmp)
        out, log = run_text_files(tmp, [src], "cut", "--doc-sep", "file", "--max-doc-chars", 4000, "--val-fraction", 0.1,
                                  "--shuffle-window", 0)
        docs = split_docs(check_shard_file(out / "sh_val_000000.bin")) + split_docs(check_shard_file(out / "sh_train_000001.bin"))
        enc = encoder()
        texts = [enc.decode([int(t) for t in d]) for d in docs]
        assert len(texts) >= len(text) // 4000 and all(len(t) <= 4000 for t in texts), [len(t) for t in texts]
        assert sorted(texts) == sorted(tf.pieces(text, 4000))
        assert "pieces of at most 4000 characters" in log, log


def run_text_files(tmp, inputs, out_name, *opts):
    out = Path(tmp) / out_name
    log = run_script("text_files.py", *inputs, "-o", out, "-n", "sh",
                     "--tiktoken", shared_file("gpt2.tiktoken"), *opts)
    return out, log


@test
def text_files_script():
    import numpy as np
    enc = encoder()
    with tempfile.TemporaryDirectory() as tmp:
        text, src = sample_text(tmp)
        shard = 3000
        order = ("--shard-size", shard, "--val-fraction", 0.05, "--shuffle-window", 0)
        out, log = run_text_files(tmp, [src], "plain", *order, "--workers", 2, "--batch-chars", 4000)
        assert "val  :" in log and "train:" in log, log
        files = sorted(p.name for p in out.iterdir())
        vals = [f for f in files if f.startswith("sh_val_")]
        trains = [f for f in files if f.startswith("sh_train_")]
        assert vals == ["sh_val_000000.bin"], files
        assert trains == [f"sh_train_{i:06d}.bin" for i in range(1, len(trains) + 1)], files
        assert len(files) == len(vals) + len(trains) and len(trains) >= 3, files
        train = [check_shard_file(out / f) for f in trains]
        assert all(len(t) == shard for t in train[:-1]) and 0 < len(train[-1]) <= shard
        val_docs = split_docs(check_shard_file(out / vals[0]))
        train_docs = split_docs(np.concatenate(train))
        # every 20th document (the first included) is val; put them back in order
        ndocs = len(val_docs) + len(train_docs)
        assert len(val_docs) == len(range(0, ndocs, 20)) >= 2
        vi, ti = iter(val_docs), iter(train_docs)
        docs = [next(vi) if i % 20 == 0 else next(ti) for i in range(ndocs)]
        assert "".join(enc.decode([int(t) for t in d]) for d in docs) == text
        assert f"val  : {sum(map(len, val_docs)) + len(val_docs):,} tokens" in log, log

        # compressed inputs and a single process give identical shards
        (Path(tmp) / "s.txt.xz").write_bytes(lzma.compress(src.read_bytes()))
        (Path(tmp) / "s.txt.gz").write_bytes(gzip.compress(src.read_bytes()))
        for name, workers in (("s.txt.xz", 2), ("s.txt.gz", 1)):
            out2, _ = run_text_files(tmp, [Path(tmp) / name], name + ".out", *order, "--workers", workers)
            assert sorted(p.name for p in out2.iterdir()) == files
            for f in files:
                assert (out2 / f).read_bytes() == (out / f).read_bytes(), (name, f)

        # shuffled (the default): each split's documents the same, in another order; the same
        # bytes from 1 and 2 workers; another seed, another order
        shuffled = {}
        for seed, workers in ((1337, 1), (1337, 2), (7, 2)):
            o, _ = run_text_files(tmp, [src], f"shuf{seed}_{workers}", "--shard-size", shard, "--val-fraction", 0.05,
                                  "--workers", workers, "--batch-chars", 4000, "--seed", seed)
            shuffled[seed, workers] = [(o / f).read_bytes() for f in files]
            sval = split_docs(check_shard_file(o / vals[0]))
            strain = split_docs(np.concatenate([check_shard_file(o / f) for f in trains]))
            for got, want in ((sval, val_docs), (strain, train_docs)):
                key = lambda d: d.tobytes()  # noqa: E731
                assert sorted(map(key, got)) == sorted(map(key, want)) and list(map(key, got)) != list(map(key, want))
        assert shuffled[1337, 1] == shuffled[1337, 2] != shuffled[7, 2]

        # a directory, one document per file: file a -> val, file b -> train
        d = Path(tmp) / "dir"
        d.mkdir()
        half = text.index("\n\n", len(text) // 2) + 2
        (d / "a.txt").write_text(text[:half])
        (d / "b.txt.gz").write_bytes(gzip.compress(text[half:].encode()))
        (d / ".hidden").write_text("not read")
        out3, _ = run_text_files(tmp, [d], "dir.out", "--doc-sep", "file", "--val-fraction", 0.5, "--workers", 2)
        val = check_shard_file(out3 / "sh_val_000000.bin")
        train = check_shard_file(out3 / "sh_train_000001.bin")
        assert enc.decode([int(t) for t in val]) == "<|endoftext|>" + text[:half]
        assert enc.decode([int(t) for t in train]) == "<|endoftext|>" + text[half:]

        # a single document cannot make both splits: an error, not an empty train split
        log = run_script("text_files.py", src, "-o", Path(tmp) / "one", "--doc-sep", "file", "--max-doc-chars", 0,
                         "--tiktoken", shared_file("gpt2.tiktoken"), expect_rc=1)
        assert "train split would be empty" in log, log
        assert not (Path(tmp) / "one").exists()


@test
def fineweb_without_network_or_datasets():
    out = run_script("fineweb.py", "--help")
    assert "fineweb" in out and "--shard-size" in out, out
    # without `datasets` it stops with a clear message, before touching the network
    code = ("import sys; sys.modules['datasets'] = None; sys.path.insert(0, sys.argv[1]); "
            "sys.argv = ['fineweb.py']; import fineweb; fineweb.main()")
    r = subprocess.run([sys.executable, "-c", code, str(DATA_SCRIPTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "pip install datasets" in r.stderr, (r.returncode, r.stdout, r.stderr)


@test
def clis_have_help():
    for script in ("data_common.py", "tinyshakespeare.py", "text_files.py"):
        assert "usage:" in run_script(script, "--help"), script


def main():
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {fn.__name__}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
