"""kopf glue: watches → work queue → reconcile (parse → observe → plan → apply → status).

`gpufleet.handlers.operator` registers the kopf handlers when imported.
"""
