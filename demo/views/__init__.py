"""The app's views besides Search: one module per tab, each with ``build_<name>_tab(ctx, ui)``."""
