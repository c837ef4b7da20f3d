"""FID floor of Fashion-MNIST and ditlab's Inception throughput, with the real FID weights (default_1.pt).

Scores the test split (the images a perfect model of the training distribution could produce) and uniform
noise images against the train split's reference statistics, at the size and fit the models train on
(32 px, zero padding), and times the Inception feature pass. Prints one JSON line per measurement.

    OMP_NUM_THREADS=2 python benchmarks/fid_floor.py --reference fashion-mnist:train --samples 10000 --noise 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ditlab.data.idx import fit_images, load_idx
from ditlab.eval.features import activations, batches_of
from ditlab.eval.score import cached_inception, metrics_from_activations, reference_statistics

METRICS = ("fid", "sfid", "precision", "recall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="fashion-mnist:train", help="dataset spec of the reference")
    parser.add_argument("--samples", type=int, default=10000, help="test-split images scored")
    parser.add_argument("--noise", type=int, default=1000, help="uniform-noise images scored")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--fit", default="pad")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    net = cached_inception(None, "cpu")
    tic = time.perf_counter()
    ref = reference_statistics(args.reference, image_size=args.image_size, fit=args.fit, inception=net,
                               batch_size=args.batch_size, cache_dir=args.cache_dir)
    print(json.dumps({"what": "reference", "spec": args.reference, "images": int(ref["num_images"]),
                      "seconds": round(time.perf_counter() - tic, 1)}), flush=True)
    test, _ = load_idx(f"fashion-mnist:test:{args.samples}")
    noise = np.random.default_rng(0).integers(0, 256, (args.noise, args.image_size, args.image_size, 1), np.uint8)
    for name, images in (("fashion-mnist:test", fit_images(test, args.image_size, args.fit)[..., None]),
                         ("uniform noise", noise)):
        torch.manual_seed(0)
        tic = time.perf_counter()
        acts = activations(batches_of(images, args.batch_size), net, total=-(-len(images) // args.batch_size),
                           keep_spatial=len(images) <= 2023, progress=True, desc=name)
        seconds = time.perf_counter() - tic
        scores = metrics_from_activations(ref, acts, METRICS)
        print(json.dumps({"what": name, "images": len(images), "reference_images": int(ref["num_images"]),
                          "pr_reference_images": len(ref["pool"]), **{k: round(v, 4) for k, v in scores.items()},
                          "inception_img_per_s": round(len(images) / seconds, 2),
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
