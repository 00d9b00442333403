"""The kopf layer: registrations that translate kopf's calls into the runtime's (no decisions, no I/O).

`gpufleet.handlers.operator` registers the watch and lifecycle handlers when
imported; `gpufleet.handlers.webhook` the validating admission webhook.
"""
