"""Paper figures of UP-Person models: ``python -m analysis <command>`` (see ``analysis.__main__``)."""
