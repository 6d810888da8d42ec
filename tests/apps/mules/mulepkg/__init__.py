"""A package for the ``--mule=pkg.module:function`` program form."""
