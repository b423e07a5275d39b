"""Command-line entry points that convert official dataset downloads into seg4seg's record format."""
