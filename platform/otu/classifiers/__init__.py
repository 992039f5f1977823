"""The classifier kit the vision, tabular and generative families share: the nets
(:mod:`~otu.classifiers.models`), their training (:mod:`~otu.classifiers.train`), scikit-learn's
digits (:mod:`~otu.classifiers.digits`) and a loop's step report (:mod:`~otu.classifiers.report`)."""
