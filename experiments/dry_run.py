"""Compiles a config's real step for a TPU pod on this CPU and prints per-chip memory against
the chip's HBM, FLOPs per step and the step-time and MFU bounds (MaxText's train_compile.py).

  python -m experiments.dry_run --config=configs/pretrain.py:paper --topology=v5e:16x16
  python -m experiments.dry_run --config=configs/meta_train.py:paper --topology=v5e:16x16

Needs libtpu (`pip install -c requirements.lock -e '.[tpu]'`); no TPU is used, nothing the size
of the model is allocated and no data is read. Two slices joined over the data-centre network:
`--num_slices=2 --config.mesh.dcn.data=2`. A config that does not fit a chip ends with one
`error:` line naming the largest buffers and the fix (exit status 2). The work is
`learned_loss.core.dry_run` (and `learned_loss.meta.dry_run` for meta-training configs).
"""

from learned_loss.core import tpu_env

# Before jax is imported: libtpu stays off the network, and jax on the CPU (a dry run only
# compiles, so it never takes the chips of a TPU VM a training job may be using).
tpu_env.apply(JAX_PLATFORMS="cpu", **tpu_env.COMPILE_ONLY)

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from learned_loss.core import cli, dry_run  # noqa: E402
from learned_loss.meta import dry_run as meta_dry_run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/pretrain.py:paper or configs/meta_train.py:paper).",
    lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:16x16",
                                "TPU topology KIND:AxB[xC]; KIND one of v4, v5e, v5p, v6e.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of the topology, joined over the "
                                   "data-centre network (mesh.dcn says which axes span them).")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}; pass settings as --config.FIELD")
    if _CONFIG.value is None:
        raise cli.UserError("--config is required, e.g. --config=configs/pretrain.py:paper")
    name = flags.FLAGS["config"].serialize().split("=", 1)[1]
    report = dry_run.dry_run(_CONFIG.value, _TOPOLOGY.value, _NUM_SLICES.value, name,
                             meta_dry_run.program_of)
    print(dry_run.format_report(report, name), flush=True)


if __name__ == "__main__":
    cli.run(main)
