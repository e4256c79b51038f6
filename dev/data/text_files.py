"""Local text files -> GPT-2 token shards in llm.c's format.

Inputs: files (plain, .gz or .xz) and directories (every non-hidden file below, in sorted
order), read as UTF-8 with invalid bytes replaced and newlines normalized to '\\n'.
Documents (--doc-sep): 'blank' (default) ends a document at a run of blank or whitespace-only
lines, which stays with the document before it; 'line' makes every non-blank line a document;
'file' makes each file one document. A file's end always ends a document. Whitespace-only
documents (leading blank lines of a file) are dropped. A document longer than --max-doc-chars
(default 32768, about 8k tokens) is cut at line ends into pieces of at most that many characters,
each a document of its own: the shuffle below cannot spread one block of millions of tokens (the
offline English mix ends with WordNet's glosses, 9.2M characters without a blank line, 7% of the
text: trained on unbroken, it made a loss spike of 4 nats in every run). Each document is preceded
by <|endoftext|>.
Split: every N-th document, N = round(1 / --val-fraction), starting with the first (so val is
never empty), goes to val: spread over the whole input, which for a concatenation of different
sources is more representative than its head or tail.
Order: each split's documents, kept whole, are shuffled (seeded, --seed) within windows of
--shuffle-window tokens (default 2^30: a corpus of up to a billion tokens is shuffled as a
whole, in 2 GiB per split). A training run then sees every source from its first steps, and the
first batches of val already sample all of them; without it, a concatenation of sources trains
one source after the other (the loss jumps where a source ends). 0 keeps the input order.
Output: {out_dir}/{name}_val_000000.bin, {name}_train_000001.bin, {name}_train_000002.bin, ...
(val shards, if more than one, count 000000, 000001, ...; every shard but the last of a split
holds exactly --shard-size tokens).

    python3 dev/data/text_files.py ../shared/data/english_tech.txt.xz -o /tmp/english
"""
import argparse
import gzip
import lzma
import multiprocessing as mp
import re
import time
from pathlib import Path

import numpy as np

import data_common as dc

SEPARATORS = {
    # after a newline and at least one blank line, before the next non-blank line
    "blank": re.compile(r"\n(?:[^\S\n]*\n)+(?=[^\S\n]*\S)"),
    # after a newline and any blank lines, before the next non-blank line
    "line": re.compile(r"\n(?:[^\S\n]*\n)*(?=[^\S\n]*\S)"),
    "file": None,
}


def list_files(inputs):
    for p in map(Path, inputs):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file()
                              and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")


def open_text(path):
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8", errors="replace")  # text mode: universal newlines


def read_documents(path, sep, read_chars=1 << 22):
    """Documents of one file, streamed: only the unfinished last document is kept between reads."""
    with open_text(path) as f:
        if sep is None:
            yield f.read()
            return
        buf = ""
        while data := f.read(read_chars):
            # A separator the previous scan missed (its lookahead ran past the end) is all
            # whitespace, so it starts after the last non-space character already scanned.
            scan = len(buf.rstrip())
            buf += data
            start = 0
            for m in sep.finditer(buf, scan):
                yield buf[start:m.end()]
                start = m.end()
            buf = buf[start:]
        yield buf


def pieces(doc, cap):
    """doc cut after its last line end within every cap characters (a longer line at cap); 0: whole"""
    start = 0
    while cap and len(doc) - start > cap:
        cut = doc.rfind("\n", start, start + cap) + 1 or start + cap
        yield doc[start:cut]
        start = cut
    yield doc[start:]


def batches(files, sep, batch_chars, max_doc_chars):
    """Lists of documents of about batch_chars characters: the unit of work of a worker."""
    batch, size = [], 0
    for path in files:
        for whole in read_documents(path, sep):
            for doc in pieces(whole, max_doc_chars):
                if not doc.strip():
                    continue
                batch.append(doc)
                size += len(doc)
                if size >= batch_chars:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch


class Shuffled:
    """Whole documents into a ShardWriter, in a seeded random order within each window of
    `window` tokens (0: in the order they come)."""

    def __init__(self, writer, window, rng):
        self.writer, self.window, self.rng = writer, window, rng
        self.docs, self.ntok = [], 0

    def add(self, tokens, lengths):
        if not self.window:
            self.writer.add(tokens)
            return
        if len(lengths):
            self.docs.extend(np.split(tokens, np.cumsum(lengths)[:-1]))
            self.ntok += len(tokens)
        if self.ntok >= self.window:
            self.flush()

    def flush(self):
        if self.docs:
            order = self.rng.permutation(len(self.docs))
            self.writer.add(np.concatenate([self.docs[i] for i in order]))
        self.docs, self.ntok = [], 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="text files (.txt, .gz, .xz, ...) or directories")
    ap.add_argument("-o", "--out-dir", metavar="DIR", help="default: <repo>/data/NAME")
    ap.add_argument("-n", "--name", help="shard name prefix (default: first input's name without extensions)")
    ap.add_argument("--doc-sep", choices=list(SEPARATORS), default="blank", help="default: %(default)s")
    ap.add_argument("--max-doc-chars", type=int, default=1 << 15, metavar="N",
                    help="cut longer documents at line ends into pieces of at most N characters, 0: never "
                         "(default %(default)s)")
    ap.add_argument("--val-fraction", type=float, default=0.005,
                    help="hold out every round(1/F)-th document for val; 0 = no val (default %(default)s)")
    ap.add_argument("--shard-size", type=int, default=10**8, help="tokens per shard (default %(default)s)")
    ap.add_argument("--shuffle-window", type=int, default=1 << 30, metavar="TOKENS",
                    help="shuffle documents within windows of this many tokens, 0: keep the order (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of the shuffle (default %(default)s)")
    ap.add_argument("--workers", type=int, default=dc.default_workers(), help="tokenizer processes (default %(default)s)")
    ap.add_argument("--batch-chars", type=int, default=1 << 20, help="characters per work unit (default %(default)s)")
    ap.add_argument("--tokenizer-out", metavar="PATH", help="also write the GPT-2 decode table (gpt2_tokenizer.bin) here")
    dc.add_tiktoken_arg(ap)
    args = ap.parse_args()
    if not 0 <= args.val_fraction < 1:
        ap.error("--val-fraction must be in [0, 1)")
    if args.shard_size <= 0:
        ap.error("--shard-size must be positive")
    if args.shuffle_window < 0:
        ap.error("--shuffle-window must be >= 0")
    if args.max_doc_chars < 0:
        ap.error("--max-doc-chars must be >= 0")

    files = list(list_files(args.inputs))
    if not files:
        raise SystemExit("no input files found")
    name = args.name or Path(args.inputs[0]).name.split(".")[0]
    out_dir = Path(args.out_dir) if args.out_dir else dc.DATA_DIR / name
    every = round(1 / args.val_fraction) if args.val_fraction > 0 else 0
    tiktoken_path = dc.resolve_tiktoken_path(args.tiktoken)
    dc.get_gpt2_encoding(tiktoken_path)  # fail early, and say which ranks are used
    print(f"{len(files)} input file(s) -> {out_dir}/{name}_{{val,train}}_*.bin; "
          f"doc-sep {args.doc_sep} (pieces of at most {args.max_doc_chars or 'any number of'} characters), val = every {every or 'no'}th document, {args.workers} worker(s), "
          + (f"shuffled in windows of {args.shuffle_window:,} tokens (seed {args.seed})" if args.shuffle_window else "input order"))

    t0 = time.time()
    val = dc.ShardWriter(out_dir, name, "val", args.shard_size, first_index=0)
    train = dc.ShardWriter(out_dir, name, "train", args.shard_size, first_index=1)
    rng = np.random.default_rng(args.seed)
    val_docs, train_docs = Shuffled(val, args.shuffle_window, rng), Shuffled(train, args.shuffle_window, rng)
    ndocs = nval_docs = seen = 0
    progress = dc.Progress()
    work = batches(files, SEPARATORS[args.doc_sep], args.batch_chars, args.max_doc_chars)
    pool = None
    if args.workers > 1:
        pool = mp.Pool(args.workers, initializer=dc.init_worker, initargs=(tiktoken_path,))
        results = dc.bounded_imap(pool, dc.encode_documents, work, inflight=2 * args.workers)
    else:
        dc.init_worker(tiktoken_path)
        results = map(dc.encode_documents, work)
    try:
        for tokens, lengths in results:
            is_val = (np.arange(ndocs, ndocs + len(lengths)) % every == 0) if every else np.zeros(len(lengths), bool)
            mask = np.repeat(is_val, lengths)
            val_docs.add(tokens[mask], lengths[is_val])
            train_docs.add(tokens[~mask], lengths[~is_val])
            ndocs += len(lengths)
            nval_docs += int(is_val.sum())
            seen += len(tokens)
            progress(lambda: f"{ndocs:,} documents, {seen:,} tokens, "
                             f"{seen / (time.time() - progress.t0) / 1e6:.2f}M tokens/s")
    finally:
        if pool is not None:
            pool.terminate()
    val_docs.flush()
    train_docs.flush()
    if train.ntok == 0:
        raise SystemExit(f"the train split would be empty ({ndocs} document(s) in all): lower "
                         f"--val-fraction or use a finer --doc-sep")
    val.close()
    train.close()

    dt = time.time() - t0
    for w, nd in ((val, nval_docs), (train, ndocs - nval_docs)):
        print(f"{w.split:5s}: {w.ntok:,} tokens, {nd:,} documents, {len(w.paths)} shard(s)")
    total = val.ntok + train.ntok
    print(f"total: {total:,} tokens in {dt:.1f}s ({total / dt / 1e6:.2f}M tokens/s)")
    for p in val.paths + train.paths:
        print(f"  {p}")
    if args.tokenizer_out:
        dc.write_gpt2_tokenizer(args.tokenizer_out, tiktoken_path)


if __name__ == "__main__":
    main()
