"""The dashboard (``recsys ui``): data, models, the champion's history, online metrics,
experiments, drift, a recommendation explorer and the flows, in the browser.

A web application beside the service, not part of the library: it reads through ``recsys``
(never the other way round), never imports torch, Prefect, BentoML, ``serving`` or ``flows``,
and changes state only through the library calls the CLI makes, with an admin key.
"""
