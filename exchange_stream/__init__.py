"""exchange-stream: a healthcare data exchange as one Faust stream-processing application."""
