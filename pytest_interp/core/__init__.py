"""Core: sites, statistics, data, metrics, records, the run cache, errors and settings. Used by every layer above;
imports none of them, and never imports pytest."""
