"""Model access: the subject (a loaded model, its tokenizer and fingerprint), the adapters that say which module is
which site, and the checks that a site exists. Describes the model; never runs it."""
