"""fleetsim: a simulated GPU fleet on a real Kubernetes control plane.

It plays what cannot run here (GPU nodes, their kubelet, vLLM, dcgm-exporter,
cloud capacity and spot interruptions) and speaks their real formats, so the
operator cannot tell it from a cluster. Parameters come from
../shared/REFERENCE.md; see hack/fleetsim/README.md for what is modelled and
what is not.
"""
