"""rextransfer: fine-tune ImageNet-pretrained ReXNet on fine-grained images and compare it.

The folders follow the flow of a run; a module imports only from its own layer or a lower one
(tests/test_layers.py checks every import, function-local ones included):

    6  cli/      the Typer app, one module per command; parses options, prints results
    5  compare/  the paper's table from run folders, rendering, the grid runner, bench
       analyze/  the paper's rank measures (single layers; features of trained models)
    4  train/    one run: orchestration (run.py), the loop, distributed, the run folder, metrics,
               inference on a finished run
    3  data/     datasets and their registry, decoding, pre-flight scan, pixel cache, loader
               pipeline and augmentation
       models/   backbone registry (widths, weight tags, published figures, weight reachability),
               building, weights files, costs
    2  config/   typed settings, recipes, their resolution (pure: no data, no torch)
    1  core/     errors and exit codes, output streams, atomic files, reachability probe, plots

Modules of one layer (compare and analyze, data and models) do not import each other. Lower
layers report progress and notes on stderr (core/console.py); results are printed by cli/ only.
"""

__version__ = "0.1.0"
