"""The repeated-run, cross-dataset benchmark protocol (FER-crossval's): every model on every dataset
over the same seeded splits, reported as mean ± std.

Single runs on one split decide nothing in FER: run-to-run spread on FER2013 or RAF-DB is ±0.4–1 pt and
on SFEW ±3–9 pt (FER-crossval's tables), larger than most published gains. ``python -m if3d.crossval``
(:mod:`if3d.crossval.__main__`) writes each run's split to disk (:mod:`.protocols`), builds the run's
dataset view (:mod:`.views`), trains and tests every model on it through the one engine
(:mod:`.runner`; sequentially or as Ray tasks), and writes the tables, plots and paired comparisons
(:mod:`.results`).
"""
