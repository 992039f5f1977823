"""Feature and data-point unlearning by information-theoretic regularisation (Xu & Strohmer 2025):
W₂-barycenter feature unlearning on tables and representations, and MI-regularised
("marginal") data-point unlearning."""
