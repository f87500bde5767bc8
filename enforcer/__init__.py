"""Device backends: the only code that touches fscrypt, loop devices and the TPM."""
