"""The stages: one module each, each defining `run(CellRun) -> CellResult` for one cell and
`placeholder(CellRun, status, reason) -> CellResult` for the rows of a cell with no number.

Modules import only light things at top level (the driver imports them for placeholders); torch,
vLLM, llmcompressor and lm-eval are imported inside `run`, in the Ray worker that runs the cell.
"""
