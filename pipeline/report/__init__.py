"""QC figures and reports.

:mod:`pipeline.report.figures` draws the QC figures; the plots of the group tests
(spaghetti, box and profile plots) live with the tests in
:mod:`pipeline.stats.longitudinal`. Both import matplotlib lazily, inside the functions.
"""
