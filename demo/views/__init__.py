"""The app's views besides Search: one module per view, each with ``build_<name>_tab(ctx, ui)``, in the
tab groups of :mod:`demo.tabs`; ``study_files`` is the allow-list the Studies views read their folders by."""
