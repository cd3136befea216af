"""What goes over the wire: replies, image encoding, stream events."""
