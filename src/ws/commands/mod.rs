//! What a client message asks of its socket, applied: one file per command.
