"""Label Studio adapter: connects the DECOMP backend to a project and reorders the project's queue by DECOMP
priority, using only the label-studio-sdk ``LabelStudio`` client for Label Studio calls.

* :mod:`adapters.connect` - settings, client, ``connect_backend`` (connection, state and webhook checks);
* :mod:`adapters.queue` - the pool, the "DECOMP queue" tab, priorities and predictions (``reprioritize``);
* :mod:`adapters.errors` - ``AdapterError``: what failed and how to fix it.
"""
