"""Tiny Shakespeare -> GPT-2 token shards, as llm.c's dev/data/tinyshakespeare.py does.

Text source, in order: --input PATH; a previous download (data/tinyshakespeare/tiny_shakespeare.txt);
the offline mirror (../shared/data/tinyshakespeare.txt); else download from karpathy/char-rnn.
Writes (under --out-dir, default <repo>/data):
    tinyshakespeare/tiny_shakespeare_val.bin     the first 32,768 tokens
    tinyshakespeare/tiny_shakespeare_train.bin   the rest
    gpt2_tokenizer.bin                           the GPT-2 decode table

    python3 dev/data/tinyshakespeare.py [--input ../shared/data/tinyshakespeare.txt]
"""
import argparse
import time
from pathlib import Path

import data_common as dc

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def shakespeare_documents(text):
    """llm.c treats every blank-line-separated section (one speaker's turn) as a document: it
    splits after each '\\n\\n', which stays at the end of the preceding document."""
    parts = text.split("\n\n")
    return [p + "\n\n" for p in parts[:-1]] + [parts[-1]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", metavar="PATH", help="local copy of input.txt (skips the download)")
    ap.add_argument("--out-dir", metavar="DIR", default=str(dc.DATA_DIR), help="default: %(default)s")
    ap.add_argument("--val-tokens", type=int, default=32768, help="tokens in the val split (default %(default)s)")
    dc.add_tiktoken_arg(ap)
    args = ap.parse_args()

    out_dir = Path(args.out_dir)
    cached = out_dir / "tinyshakespeare" / "tiny_shakespeare.txt"
    src = Path(args.input) if args.input else cached if cached.is_file() else dc.find_shared_file("tinyshakespeare.txt")
    if src is None:
        dc.download(URL, cached)
        src = cached
    print(f"reading {src}")
    text = src.read_text(encoding="utf-8")

    t0 = time.time()
    enc = dc.get_gpt2_encoding(args.tiktoken)
    tokens, _ = dc.encode_documents(shakespeare_documents(text), enc)
    if len(tokens) <= args.val_tokens:
        raise SystemExit(f"only {len(tokens)} tokens: nothing left for train after {args.val_tokens} val tokens")
    for split, toks in (("val", tokens[:args.val_tokens]), ("train", tokens[args.val_tokens:])):
        path = out_dir / "tinyshakespeare" / f"tiny_shakespeare_{split}.bin"
        dc.write_shard(path, toks)
        print(f"wrote {len(toks):,} tokens to {path}")
    print(f"tokenized {len(text):,} characters in {time.time() - t0:.2f}s")
    dc.write_gpt2_tokenizer(out_dir / "gpt2_tokenizer.bin", args.tiktoken)


if __name__ == "__main__":
    main()
