"""Blueprints for the WeChat and Alipay mini-programs: schema in, one service call, schema out."""
