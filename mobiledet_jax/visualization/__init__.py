"""Pictures of data and results: boxes drawn on images (``draw``), grids of images (``mosaic``),
matplotlib figures of evaluations (``figures``) and of datasets (``dataset_figures``), the dataset
browser (``browse``) and the dataset statistics report (``dataset_report``).

The room sits above ``data``, ``detection`` and ``models`` and below ``evaluation`` and
``training``: it draws what those produce and never scores or trains anything. Matplotlib is used
through ``matplotlib.figure.Figure`` with the Agg canvas only (no pyplot, no display, no global
state), so figures can be drawn from any thread of a training run.
"""
