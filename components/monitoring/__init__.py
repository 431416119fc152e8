"""Monitoring: drift of new catalog batches (signals, calibration, report), catalog time slicing, replay, backtest."""
