"""Classifier instance unlearning: DLFD (Choi & Na 2024) and the retrain/finetune/neggrad baselines."""
