"""FineWeb-Edu / FineWeb (HuggingFace) -> GPT-2 token shards in llm.c's format.

Downloads a sample of HuggingFaceFW/fineweb-edu (or HuggingFaceFW/fineweb with -t classic)
through the `datasets` library (network; HF caches the whole sample first, tens of GB for
sample-10BT, unless --streaming), tokenizes every document behind an <|endoftext|> in worker
processes, and writes shards of --shard-size tokens; as in llm.c, the first shard (the first
--val-tokens tokens) is val:
    {out_dir}/edufineweb_val_000000.bin, edufineweb_train_000001.bin, ...

    pip install datasets
    python3 dev/data/fineweb.py -t edu -v 10B          # -> data/edu_fineweb10B/
"""
import argparse
import multiprocessing as mp
import time
from pathlib import Path

import data_common as dc

DATASETS = {"edu": "HuggingFaceFW/fineweb-edu", "classic": "HuggingFaceFW/fineweb"}
SAMPLES = {"10B": "sample-10BT", "100B": "sample-100BT"}
PREFIX = {"edu": "edufineweb", "classic": "fineweb"}


def text_batches(dataset, docs_per_batch):
    """Lists of document texts: the unit of work of a worker."""
    batch = []
    for row in dataset:
        batch.append(row["text"])
        if len(batch) == docs_per_batch:
            yield batch
            batch = []
    if batch:
        yield batch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-t", "--type", choices=list(DATASETS), default="edu", help="default: %(default)s")
    ap.add_argument("-v", "--version", choices=list(SAMPLES), default="10B", help="sample size (default %(default)s)")
    ap.add_argument("-s", "--shard-size", type=int, default=10**8, help="tokens per shard (default %(default)s)")
    ap.add_argument("--val-tokens", type=int, default=None, help="tokens in the val split (default: one shard)")
    ap.add_argument("--max-tokens", type=int, default=0, help="stop after this many tokens (0: the whole sample)")
    ap.add_argument("-o", "--out-dir", metavar="DIR", help="default: <repo>/data/{edu_,}fineweb{10B,100B}")
    ap.add_argument("--streaming", action="store_true", help="stream from the Hub instead of caching the sample first")
    ap.add_argument("--workers", type=int, default=max(1, dc.default_workers() - 2),
                    help="tokenizer processes (default %(default)s)")
    ap.add_argument("--tokenizer-out", metavar="PATH", help="also write the GPT-2 decode table (gpt2_tokenizer.bin) here")
    dc.add_tiktoken_arg(ap)
    args = ap.parse_args()

    try:
        from datasets import load_dataset  # imported here so --help works without it
    except ImportError:
        raise SystemExit("fineweb.py needs the HuggingFace datasets library: pip install datasets")

    local = ("edu_" if args.type == "edu" else "") + "fineweb" + args.version
    out_dir = Path(args.out_dir) if args.out_dir else dc.DATA_DIR / local
    name = PREFIX[args.type]
    val_tokens = args.shard_size if args.val_tokens is None else args.val_tokens
    tiktoken_path = dc.resolve_tiktoken_path(args.tiktoken)
    dc.get_gpt2_encoding(tiktoken_path)  # fail early, and say which ranks are used

    print(f"loading {DATASETS[args.type]} / {SAMPLES[args.version]}")
    ds = load_dataset(DATASETS[args.type], name=SAMPLES[args.version], split="train", streaming=args.streaming)

    val = dc.ShardWriter(out_dir, name, "val", args.shard_size, first_index=0)
    train = dc.ShardWriter(out_dir, name, "train", args.shard_size, first_index=1)
    progress = dc.Progress()
    ndocs = 0
    with mp.Pool(args.workers, initializer=dc.init_worker, initargs=(tiktoken_path,)) as pool:
        for tokens, lengths in dc.bounded_imap(pool, dc.encode_documents, text_batches(ds, 256),
                                                inflight=2 * args.workers):
            if args.max_tokens:
                tokens = tokens[:max(0, args.max_tokens - val.ntok - train.ntok)]
            # the val split is the head of the stream; a document may straddle it, as in llm.c
            take = min(len(tokens), max(0, val_tokens - val.ntok))
            val.add(tokens[:take])
            train.add(tokens[take:])
            ndocs += len(lengths)
            progress(lambda: f"{ndocs:,} documents, {val.ntok + train.ntok:,} tokens, "
                             f"{len(val.paths) + len(train.paths)} shards written")
            if args.max_tokens and val.ntok + train.ntok >= args.max_tokens:
                break
    val.close()
    train.close()
    print(f"val: {val.ntok:,} tokens in {len(val.paths)} shard(s); train: {train.ntok:,} tokens in "
          f"{len(train.paths)} shard(s); {ndocs:,} documents in {time.time() - progress.t0:.0f}s -> {out_dir}")
    if args.tokenizer_out:
        dc.write_gpt2_tokenizer(args.tokenizer_out, tiktoken_path)


if __name__ == "__main__":
    main()
