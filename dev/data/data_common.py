"""Shared helpers for the data-preparation scripts in dev/data/.

File formats are those of SPEC.md section 6 (llm.c's): token shards and the GPT-2 tokenizer
decode table. Everything here works offline when given local files; only the fallback
tiktoken.get_encoding("gpt2") needs the network.

Run directly to write the decode table or to check shards:
    python3 dev/data/data_common.py --tokenizer-out data/gpt2_tokenizer.bin
    python3 dev/data/data_common.py --check data/tinyshakespeare/*.bin
"""
import argparse
import base64
import collections
import hashlib
import os
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
# The offline mirror sits beside the checkout (../shared/data); on the GPU machines it is
# carried into the checkout (shared/data).
SHARED_DATA_DIRS = [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data"]

HEADER_INTS = 256                      # both formats start with 256 32-bit ints (1024 bytes)
SHARD_MAGIC, SHARD_VERSION = 20240520, 1
TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240328, 2

GPT2_VOCAB = 50257
EOT = 50256
EOT_TEXT = "<|endoftext|>"
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# sha256 that tiktoken pins for the GPT-2 (r50k_base) ranks file; any other file would
# silently produce different token ids, so a mismatch is an error.
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def find_shared_file(name):
    """Path of `name` in the offline mirror, or None."""
    for d in SHARED_DATA_DIRS:
        if (d / name).is_file():
            return d / name
    return None


def atomic_write(path, chunks):
    """Write byte chunks to path.tmp and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def download(url, path):
    """Fetch url to path (via path.tmp), printing progress."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    print(f"downloading {url} -> {path}")
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0)
        done = 0
        while chunk := r.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            if total:
                print(f"\r  {done / 1e6:.1f} / {total / 1e6:.1f} MB", end="", flush=True)
    print()
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# token shards: int32 header[256] = {magic, version, ntok, 0...}, then ntok uint16 tokens

def write_shard(path, tokens):
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1
    if tokens.dtype != np.uint16:
        # range check before narrowing: a silent wrap would corrupt the data
        assert tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < 2**16), "token out of uint16 range"
        tokens = tokens.astype(np.uint16)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    atomic_write(path, [header.tobytes(), tokens.astype("<u2", copy=False).tobytes()])


def read_shard(path):
    """Tokens of a shard as uint16; raises ValueError if the file is not a valid shard."""
    size = os.path.getsize(path)
    if size < 4 * HEADER_INTS:
        raise ValueError(f"{path}: {size} bytes, shorter than the 1024-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"{path}: bad magic {header[0]} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: unsupported version {header[1]} (expected {SHARD_VERSION})")
    ntok = int(header[2])
    if ntok < 0 or size != 4 * HEADER_INTS + 2 * ntok:
        raise ValueError(f"{path}: header says {ntok} tokens, expected file size "
                         f"{4 * HEADER_INTS + 2 * ntok} but it is {size}")
    return np.fromfile(path, dtype="<u2", offset=4 * HEADER_INTS).astype(np.uint16, copy=False)


class ShardWriter:
    """Collects tokens of one split into shards of exactly shard_size tokens (the last may be
    shorter), named like llm.c: {out_dir}/{name}_{split}_{index:06d}.bin."""

    def __init__(self, out_dir, name, split, shard_size, first_index=0):
        self.out_dir, self.name, self.split = Path(out_dir), name, split
        self.index = first_index
        # np.empty maps pages lazily, so an unused or small split costs no memory
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0
        self.ntok = 0          # tokens added in total
        self.paths = []

    def add(self, tokens):
        self.ntok += len(tokens)
        while len(tokens):
            n = min(len(tokens), len(self.buf) - self.fill)
            self.buf[self.fill:self.fill + n] = tokens[:n]
            self.fill += n
            tokens = tokens[n:]
            if self.fill == len(self.buf):
                self._flush()

    def close(self):
        if self.fill:
            self._flush()
        return self.paths

    def _flush(self):
        path = self.out_dir / f"{self.name}_{self.split}_{self.index:06d}.bin"
        write_shard(path, self.buf[:self.fill])
        self.paths.append(path)
        self.index += 1
        self.fill = 0


# ----------------------------------------------------------------------------------------
# GPT-2 BPE: ranks file, tiktoken encoder, tokenizer decode table

def add_tiktoken_arg(parser):
    parser.add_argument("--tiktoken", metavar="PATH", default=None,
                        help="local GPT-2 ranks file (gpt2.tiktoken); default: $GPT2_TIKTOKEN, "
                             "else ../shared/data/gpt2.tiktoken beside the repo if present, "
                             "else tiktoken.get_encoding('gpt2') (downloads)")


def resolve_tiktoken_path(path=None):
    """Local ranks file to use: explicit path, $GPT2_TIKTOKEN, the offline mirror, or None."""
    for p, origin in ((path, "--tiktoken"), (os.environ.get("GPT2_TIKTOKEN"), "$GPT2_TIKTOKEN")):
        if p:
            if not Path(p).is_file():
                raise FileNotFoundError(f"{origin}: no such file {p}")
            return Path(p)
    return find_shared_file("gpt2.tiktoken")


def load_gpt2_ranks(path):
    """Token bytes of the ranks file (base64 token, space, rank per line), indexed by rank.
    Needs no tiktoken."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_TIKTOKEN_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the GPT-2 ranks file ({GPT2_TIKTOKEN_SHA256})")
    tokens = [None] * EOT
    for line in data.splitlines():
        if line:
            b64, rank = line.split()
            tokens[int(rank)] = base64.b64decode(b64)
    assert all(t is not None for t in tokens), f"{path}: ranks are not 0..{EOT - 1}"
    return tokens


def get_gpt2_encoding(tiktoken_path=None, verbose=True):
    """tiktoken Encoding for GPT-2: from a local ranks file if one is found (offline),
    otherwise tiktoken.get_encoding('gpt2'), which downloads its files."""
    import tiktoken
    path = resolve_tiktoken_path(tiktoken_path)
    if path is None:
        if verbose:
            print("no local gpt2.tiktoken found; using tiktoken.get_encoding('gpt2') (network)")
        return tiktoken.get_encoding("gpt2")
    if verbose:
        print(f"GPT-2 BPE ranks from {path}")
    ranks = {tok: i for i, tok in enumerate(load_gpt2_ranks(path))}
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=GPT2_VOCAB, pat_str=GPT2_PAT,
                             mergeable_ranks=ranks, special_tokens={EOT_TEXT: EOT})


def gpt2_token_bytes(tiktoken_path=None):
    """Bytes of every token id 0..50256 (the EOT token as the text '<|endoftext|>').
    Built from the local ranks file when one is found, else from the online tiktoken encoding."""
    path = resolve_tiktoken_path(tiktoken_path)
    if path is not None:
        return load_gpt2_ranks(path) + [EOT_TEXT.encode()]
    enc = get_gpt2_encoding(None)
    return [enc.decode_single_token_bytes(i) for i in range(GPT2_VOCAB)]


def check_token_bytes(token_bytes, enc):
    """Assert the decode table agrees with tiktoken for every id."""
    assert len(token_bytes) == enc.n_vocab == GPT2_VOCAB, (len(token_bytes), enc.n_vocab)
    bad = [i for i in range(GPT2_VOCAB) if token_bytes[i] != enc.decode_single_token_bytes(i)]
    assert not bad, f"decode table disagrees with tiktoken for ids {bad[:10]}"


def write_tokenizer(path, token_bytes):
    """llm.c's gpt2_tokenizer.bin: uint32 header[256] = {magic, version 2, vocab, eot},
    then per token a uint8 length (1..255) and the bytes."""
    header = np.zeros(HEADER_INTS, dtype="<u4")
    header[:4] = TOKENIZER_MAGIC, TOKENIZER_VERSION, len(token_bytes), EOT
    body = bytearray()
    for i, b in enumerate(token_bytes):
        assert 1 <= len(b) <= 255, f"token {i} has length {len(b)}"
        body.append(len(b))
        body += b
    atomic_write(path, [header.tobytes(), bytes(body)])


def read_tokenizer(path):
    """Token bytes from a gpt2_tokenizer.bin; raises ValueError if the file is malformed."""
    data = Path(path).read_bytes()
    if len(data) < 4 * HEADER_INTS:
        raise ValueError(f"{path}: shorter than the 1024-byte header")
    header = np.frombuffer(data, dtype="<u4", count=HEADER_INTS)
    if header[0] != TOKENIZER_MAGIC or header[1] != TOKENIZER_VERSION:
        raise ValueError(f"{path}: bad magic/version {header[0]}/{header[1]}")
    vocab, pos, tokens = int(header[2]), 4 * HEADER_INTS, []
    for i in range(vocab):
        if pos >= len(data) or data[pos] == 0 or pos + 1 + data[pos] > len(data):
            raise ValueError(f"{path}: truncated or zero-length entry at token {i}")
        tokens.append(data[pos + 1:pos + 1 + data[pos]])
        pos += 1 + data[pos]
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes")
    if int(header[3]) >= vocab:
        raise ValueError(f"{path}: eot {header[3]} outside the vocab")
    return tokens


def write_gpt2_tokenizer(path, tiktoken_path=None):
    """Build, verify (when tiktoken is installed) and write the GPT-2 decode table."""
    token_bytes = gpt2_token_bytes(tiktoken_path)
    try:
        import tiktoken  # noqa: F401  (only to know whether we can cross-check)
    except ImportError:
        print("tiktoken not installed: decode table NOT cross-checked against tiktoken")
    else:
        check_token_bytes(token_bytes, get_gpt2_encoding(tiktoken_path, verbose=False))
    write_tokenizer(path, token_bytes)
    print(f"wrote {path} ({len(token_bytes)} tokens)")


# ----------------------------------------------------------------------------------------
# tokenizing documents, in worker processes

_worker_enc = None


def init_worker(tiktoken_path):
    """Pool initializer: each process builds its own encoder (cheap, and avoids pickling one)."""
    global _worker_enc
    _worker_enc = get_gpt2_encoding(tiktoken_path, verbose=False)


def encode_documents(docs, enc=None):
    """Tokens of a list of documents, each preceded by <|endoftext|>, and the per-document
    token counts (EOT included). encode_ordinary: a literal '<|endoftext|>' in the text is
    ordinary text, never the special token."""
    enc = enc or _worker_enc
    flat, lengths = [], np.empty(len(docs), dtype=np.int64)
    for i, d in enumerate(docs):
        ids = enc.encode_ordinary(d)
        flat.append(EOT)
        flat.extend(ids)
        lengths[i] = len(ids) + 1
    tokens = np.array(flat, dtype=np.uint16)  # GPT-2 ids (< 50257) fit; numpy>=2 raises on overflow
    return tokens, lengths


def bounded_imap(pool, func, items, inflight):
    """Ordered pool map that keeps at most `inflight` tasks submitted, so a large input
    streams through instead of being read ahead into memory."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.apply_async(func, (item,)))
        if len(pending) >= inflight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def default_workers():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Progress:
    """Prints a line at most every `every` seconds."""

    def __init__(self, every=10.0):
        self.t0 = self.last = time.time()
        self.every = every

    def __call__(self, msg_fn, force=False):
        now = time.time()
        if force or now - self.last >= self.every:
            self.last = now
            print(f"  [{now - self.t0:6.1f}s] {msg_fn()}", flush=True)


def main():
    ap = argparse.ArgumentParser(description="Write the GPT-2 decode table and/or check token shards.")
    ap.add_argument("--tokenizer-out", metavar="PATH", help="write gpt2_tokenizer.bin here")
    ap.add_argument("--check", nargs="+", metavar="SHARD", default=[], help="validate shards, print token counts")
    add_tiktoken_arg(ap)
    args = ap.parse_args()
    if not args.tokenizer_out and not args.check:
        ap.error("nothing to do: give --tokenizer-out and/or --check")
    if args.tokenizer_out:
        write_gpt2_tokenizer(args.tokenizer_out, args.tiktoken)
    total = 0
    for p in args.check:
        n = len(read_shard(p))
        total += n
        print(f"{p}: {n:,} tokens")
    if args.check:
        print(f"{len(args.check)} shards, {total:,} tokens, all valid")


if __name__ == "__main__":
    main()
