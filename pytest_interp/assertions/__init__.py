"""Assertions: the claims. One decision rule (:mod:`.decide`), then a module per claim family."""
