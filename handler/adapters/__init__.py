"""The only code importing a serving framework: TorchServe's handler and Triton's tensor mapping, each thin
over the core."""
