"""The ``gpf`` command line: thin click wrappers around the library."""
