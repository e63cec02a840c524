"""Heads: every model over cached features is a scikit-learn classifier.

``modules`` (the torch modules: MLP, concatenation, attention fusion), ``torch_head`` (``TorchHeadClassifier``)
and ``torch_training`` (its data plumbing and epoch loop), ``svm``, ``boosted`` (XGBoost) and ``linear``
(logistic regression), ``params`` (shared parameter checks), ``calibration`` (post-hoc calibration and
operating points fitted on training rows only), ``zoo`` (head names → ``HeadSpec``), ``inputs`` (the one X
layout of a head), ``options`` (``--head-param`` resolved and recorded) and ``state`` (scikit-learn pipelines
as data, no pickle).

Import from the modules; the package itself imports nothing.
"""
