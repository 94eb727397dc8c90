"""The paper's table from run folders (table.py), its formats (render.py), the grid runner
(grid.py) and backbone throughput (bench.py)."""
