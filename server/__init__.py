"""The query service: the Lambda handler, its request/response models, the local emulator run."""
