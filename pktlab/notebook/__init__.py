"""The notebook side: magics, dashboard, controls and the statistics behind them."""
