"""The async job API in front of TorchServe: gateway (HTTP), Redis queue and job state, dispatcher (a sidecar of
each TorchServe pod), result store, webhooks.

Nothing here imports TorchServe or touches a GPU: TorchServe still does every image. The request schema is the
handler's (:mod:`handler.contract.fields`), so a body the gateway accepts is one /predictions accepts.
"""
