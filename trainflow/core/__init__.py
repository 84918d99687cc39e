"""The ground floor: errors, durable file writes, the run configuration, the names of what trainflow writes, free-space checks, the fault hook and package pins. Imports nothing else of trainflow."""
