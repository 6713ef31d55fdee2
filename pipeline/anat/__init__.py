"""Structural (T1w / FLAIR) analysis: brain extraction, bias correction, tissue
segmentation, white-matter lesions and volumes.

Pure functions on arrays and nibabel images; heavy imports (scipy, pandas) are made
inside the functions so that ``import pipeline.anat`` stays cheap.

* :mod:`pipeline.anat.brain`: :func:`~pipeline.anat.brain.extract_brain`,
  :func:`~pipeline.anat.brain.correct_bias`.
* :mod:`pipeline.anat.segment`: :func:`~pipeline.anat.segment.segment_tissues`.
* :mod:`pipeline.anat.lesions`: labelling, location classes, automatic FLAIR
  segmentation and longitudinal comparison of lesions.
* :mod:`pipeline.anat.volumes`: :func:`~pipeline.anat.volumes.tissue_volumes`.
"""
