"""Two processes (jax.distributed on localhost, CPU, 2 devices each) read disjoint data shards and
assemble the global batch correctly; evaluation covers each image exactly once; resume works.

The parent prepares the data, then runs this file as two worker processes.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 8
STEPS = 4


def _config(cache_dir):
    from mobiledet_jax import data

    cfg = data.data_config()
    cfg.cache_dir = str(cache_dir)
    cfg.synthetic.num_train, cfg.synthetic.num_val = 40, 21
    cfg.num_shards = 4
    cfg.shuffle_buffer = 32
    return cfg


def _worker(process_id: int, port: int, cache_dir: str, out: str) -> None:
    import jax
    from jax.experimental import multihost_utils

    from mobiledet_jax import data
    from mobiledet_jax.data import iterators, sources

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    cfg = _config(cache_dir)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    shard_index, num_shards, local = iterators.data_shard(mesh, "data", GLOBAL_BATCH)
    result = {
        "process": jax.process_index(),
        "devices": [jax.local_device_count(), jax.device_count()],
        "shard": [shard_index, num_shards, local],
        "files": sources.open_split(cfg, "train").files_for(shard_index, num_shards),
        "batches": [],
    }
    it = data.build_train_iterator(cfg, GLOBAL_BATCH, 64, mesh, seed=0)
    for step in range(STEPS):
        if step == 2:
            it.save(pathlib.Path(out).parent / "input_state")
        batch = next(it)
        ids = batch["image_id"]
        result["batches"].append(
            {
                "global_shape": list(batch["image"].shape),
                "local_rows": [
                    [s.index[0].start or 0, np.asarray(s.data).tolist()]
                    for s in ids.addressable_shards
                ],
                "gathered": multihost_utils.process_allgather(ids, tiled=True).tolist(),
                "image_sum": float(jax.jit(lambda x: x.sum())(batch["image"])),
                "local_image_sum": float(
                    sum(
                        np.asarray(s.data, np.float64).sum()
                        for s in batch["image"].addressable_shards
                    )
                ),
            }
        )
    resumed = data.build_train_iterator(cfg, GLOBAL_BATCH, 64, mesh, seed=0)
    resumed.restore(pathlib.Path(out).parent / "input_state")
    result["resumed"] = [
        [np.asarray(s.data).tolist() for s in next(resumed)["image_id"].addressable_shards]
        for _ in range(2)
    ]
    evaluation = data.build_eval_iterator(cfg, GLOBAL_BATCH, 64, mesh)
    result["eval_batches"] = len(evaluation)
    result["eval_ids"] = []
    for batch in evaluation:
        for ids, mask in zip(
            batch["image_id"].addressable_shards,
            batch["example_mask"].addressable_shards,
            strict=True,
        ):
            result["eval_ids"] += np.asarray(ids.data)[np.asarray(mask.data)].tolist()
    pathlib.Path(out).write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _ids_by_file(files):
    import tensorflow as tf

    from mobiledet_jax.data import records

    return {
        f: {int(records.parse_example(r)["image/id"]) for r in tf.data.TFRecordDataset(f)}
        for f in files
    }


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_and_assemble_the_global_batch(tmp_path):
    from mobiledet_jax.data import sources

    cfg = _config(tmp_path / "cache")
    train, val = sources.open_split(cfg, "train"), sources.open_split(cfg, "val")
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    procs = []
    for pid in range(2):
        out = tmp_path / f"p{pid}" / "result.json"
        out.parent.mkdir()
        cmd = [sys.executable, __file__, str(pid), str(port), str(tmp_path / "cache"), str(out)]
        procs.append(
            (
                subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                ),
                out,
            )
        )
    results = []
    for proc, out in procs:
        try:
            log, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            pytest.fail("worker timed out")
        assert proc.returncode == 0, log[-4000:]
        results.append(json.loads(out.read_text()))
    results.sort(key=lambda r: r["process"])

    ids_by_file = _ids_by_file(train.prepared.files)
    seen = []
    for r in results:
        assert r["devices"] == [2, 4] and r["shard"][1:] == [2, 4]
        mine = set().union(*(ids_by_file[f] for f in r["files"]))
        ids = {i for b in r["batches"] for _, rows in b["local_rows"] for i in rows}
        assert ids <= mine, "a process read outside its own shard"
        seen.append((set(r["files"]), ids))
    assert not seen[0][0] & seen[1][0] and seen[0][0] | seen[1][0] == set(train.prepared.files)
    assert not seen[0][1] & seen[1][1]
    assert {r["shard"][0] for r in results} == {0, 1}

    for step in range(STEPS):
        gathered = results[0]["batches"][step]["gathered"]
        assert gathered == results[1]["batches"][step]["gathered"]
        assert results[0]["batches"][step]["global_shape"] == [GLOBAL_BATCH, 64, 64, 3]
        for r in results:  # each process's rows sit where its devices hold them
            for start, rows in r["batches"][step]["local_rows"]:
                assert gathered[start : start + len(rows)] == rows
        total = sum(r["batches"][step]["local_image_sum"] for r in results)
        assert results[0]["batches"][step]["image_sum"] == pytest.approx(total, rel=1e-4)

    for r in results:  # resumed after step 2: the batches of steps 2 and 3 again
        expected = [[rows for _, rows in r["batches"][s]["local_rows"]] for s in (2, 3)]
        assert r["resumed"] == expected

    # 21 images in 4 record files (6, 5, 5, 5): 11 and 10 per process, 4 per local batch
    assert results[0]["eval_batches"] == results[1]["eval_batches"] == 3
    eval_ids = results[0]["eval_ids"] + results[1]["eval_ids"]
    assert sorted(eval_ids) == sorted(i["id"] for i in val.info.ground_truth()["images"])


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
