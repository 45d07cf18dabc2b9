"""What a stage's config says, read by mmcv's own ``Config`` as UniAD's tools/train.py reads it: the ``_base_``
files merged, then the stage's ``--cfg-options``. One ``--stage CONFIG [KEY=VALUE ...]`` per config (mmcv is
imported once for all of them); prints a JSON list with one object per stage::

    cd /workspace/UniAD && python uniad_config_facts.py \\
        --stage projects/configs/stage1_track_map/base_track_map.py data.workers_per_gpu=4 \\
        --stage projects/configs/stage2_e2e/base_e2e.py

    [{"total_epochs": 6, "max_epochs": 6, "evaluation_interval": 6, "load_from": "ckpts/bevformer_r101_dcn_24ep.pth",
      "data_files": [["data.train.ann_file", "data/infos/nuscenes_infos_temporal_train.pkl"], ...],
      "data_roots": [["data.train.data_root", "data/nuscenes/"], ...]}, {...}]

``data_files``: every ``ann_file`` and every ``.pkl`` the config names (UniAD's info files, the motion anchors),
with where in the config; ``data_roots``: every ``data_root``. Standard library and mmcv only, valid Python 3.8:
it runs in UniAD's interpreter, where the pipeline is not installed.
"""

import argparse
import json
import sys

from mmcv import Config, DictAction


def _walk(node, path, files, roots):
    if isinstance(node, dict):
        for key, value in node.items():
            _walk(value, path + [str(key)], files, roots)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _walk(value, path + [str(i)], files, roots)
    elif isinstance(node, str) and path:
        where = ".".join(path)
        if path[-1] == "data_root":
            roots.append([where, node])
        elif path[-1] == "ann_file" or node.endswith(".pkl"):
            files.append([where, node])


def facts_of(config, options):
    cfg = Config.fromfile(config)
    if options:
        cfg.merge_from_dict(options)
    plain = cfg._cfg_dict.to_dict()
    files, roots = [], []
    _walk({k: v for k, v in plain.items() if k not in ("load_from", "resume_from")}, [], files, roots)
    return {
        "total_epochs": plain.get("total_epochs"),
        "max_epochs": (plain.get("runner") or {}).get("max_epochs"),
        "evaluation_interval": (plain.get("evaluation") or {}).get("interval"),
        "load_from": plain.get("load_from"),
        "data_files": files,
        "data_roots": roots,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="the facts of UniAD configs, as JSON")
    parser.add_argument(
        "--stage",
        nargs="+",
        action="append",
        required=True,
        metavar="CONFIG [KEY=VALUE",
        help="a config and its cfg options, as tools/train.py takes them",
    )
    options = argparse.ArgumentParser()
    options.add_argument("--cfg-options", nargs="+", action=DictAction)  # tools/train.py's own parsing
    facts = []
    for config, *pairs in parser.parse_args(argv).stage:
        parsed = options.parse_args(["--cfg-options"] + pairs if pairs else []).cfg_options
        facts.append(facts_of(config, parsed))
    json.dump(facts, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
