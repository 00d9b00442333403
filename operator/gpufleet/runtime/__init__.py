"""The operator's runtime: the work queue, the executors of the plans (reconcile, autoscale), leader
election, the long-running loops (interruption queue, price refresh, autoscale sweep), the capacity store
and the operator's own metrics, wired together by `composition_root`. No decisions: those are in
gpufleet.planning; no kopf: that is gpufleet.handlers.
"""
