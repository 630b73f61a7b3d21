"""The plugin side: options, the claims session, reports, the registry of pre-registered claims, and baselines.
The only layer besides the plugin module that imports pytest."""
