// Chinese and English labels; the browser language chooses, the switch in the header overrides.

const STRINGS = {
  zh: {
    "app.title": "视频监控中心",
    "nav.wall": "值守大屏", "nav.alerts": "告警处置", "nav.camera": "摄像机", "nav.clip": "调取录像",
    "nav.reports": "统计报表", "nav.logout": "退出",
    "login.title": "登录", "login.token": "访问令牌", "login.remember": "在本机记住",
    "login.submit": "登录", "login.bad": "令牌无效或已吊销",
    "conn.live": "实时", "conn.lost": "连接中断，正在重连…",
    "rate.online": "在线率", "rate.upload": "上传率", "rate.intact": "完好率", "rate.target": "目标",
    "count.devices": "设备总数", "count.online": "在线", "count.offline": "离线", "count.degraded": "故障",
    "count.unknown": "未知", "count.alerts": "未处理告警",
    "wall.tree": "三级视频监控中心", "wall.problems": "离线及故障摄像机（按时长）", "wall.none": "全部正常",
    "wall.more": "另有 {n} 台", "wall.grid": "画面", "wall.cycle": "轮巡(秒)", "wall.cams": "摄像机",
    "wall.newAlert": "新告警", "wall.sound": "声音", "wall.level": "{n}级",
    "state.online": "在线", "state.uploading": "在线上传", "state.degraded": "故障", "state.offline": "离线",
    "state.unknown": "未知",
    "tile.offline": "离线", "tile.since": "自 {t} 起，已 {d}", "tile.connecting": "连接中…",
    "tile.unavailable": "无实时视频", "tile.empty": "未选择",
    "alerts.title": "告警", "alerts.what": "内容", "alerts.state": "状态", "alerts.center": "中心", "alerts.kind": "类型",
    "alerts.all": "全部", "alerts.active": "未关闭", "alerts.open": "待确认", "alerts.acknowledged": "已确认",
    "alerts.resolved": "已恢复", "alerts.ack": "确认", "alerts.resolve": "关闭", "alerts.comment": "备注",
    "alerts.since": "发生时间", "alerts.by": "处理人", "alerts.none": "没有告警", "alerts.snapshot": "快照",
    "kind.device_offline": "摄像机离线", "kind.device_degraded": "图像故障", "kind.agent_offline": "采集端离线", "kind.site_offline": "站点离线",
    "camera.details": "设备信息", "camera.id": "设备编码", "camera.civil": "行政区划", "camera.industry": "行业",
    "camera.type": "类型", "camera.network": "网络", "camera.serial": "序号", "camera.agent": "采集端",
    "camera.lastSeen": "最后信号", "camera.fps": "帧率", "camera.bitrate": "码率",
    "camera.timeline": "在线时间线", "camera.quality": "图像质量", "camera.noQuality": "暂无质量数据",
    "camera.open": "打开", "camera.search": "输入20位设备编码",
    "clip.title": "录像调取", "clip.device": "设备编码", "clip.start": "开始时间", "clip.end": "结束时间",
    "clip.reason": "调取事由", "clip.case": "案件编号", "clip.submit": "导出MP4", "clip.forbidden":
      "当前角色（{role}）无权调取录像，需要公安（police）角色。",
    "clip.done": "已导出 {n} 字节，SHA-256 {sha}", "clip.failed": "导出失败：{e}",
    "reports.title": "可用性与录像保存报表", "reports.availability": "可用性", "reports.period": "统计周期", "reports.csv": "下载CSV",
    "reports.center": "中心", "reports.devices": "设备", "reports.worst": "最差的摄像机",
    "reports.monitored": "监测时长", "common.loading": "加载中…", "common.error": "出错：{e}",
    "common.forbidden": "当前角色无权查看此页面",
    "rec.title": "录像检索", "rec.forbidden": "录像列表仅对公安（police）和管理员（admin）角色开放，当前角色为 {role}。",
    "rec.last.1h": "近1小时", "rec.last.24h": "近24小时", "rec.last.7d": "近7天", "rec.from": "从", "rec.to": "至",
    "rec.show": "查询", "rec.badWindow": "结束时间须晚于开始时间", "rec.recorded": "有录像", "rec.gap": "缺失",
    "rec.motion": "运动", "rec.quality": "质量事件", "rec.hold": "法律保全", "rec.q.raised": "出现", "rec.q.cleared": "恢复",
    "rec.clickHint": "点击录像段可填入下方调取时间",
    "rec.summary": "{n} 个录像片段，共 {rec}（{pct}），缺失 {g} 段，运动片段 {m} 个，质量事件 {q} 个",
    "rec.truncated": "（片段过多，运动标记仅显示一部分）", "rec.gapList": "缺失时段（{n}，按时长）", "rec.length": "时长",
    "ret.title": "录像保存合规（法规要求 {d} 天）", "ret.asOf": "截至 {t}", "ret.csv": "下载合规CSV",
    "ret.meeting": "达标设备", "ret.ratio": "达标率", "ret.stored": "存储量", "ret.hours": "录像时长",
    "ret.completeness": "录像完整率（近 {d}）", "ret.free": "磁盘剩余 {b}", "ret.devices": "各设备保存情况（未达标在前）",
    "ret.keep": "保存天数", "ret.source": "策略来源", "ret.footage": "实有录像(天)", "ret.oldest": "最早录像",
    "ret.status": "状态", "ret.days": "{n}天", "ret.s.compliant": "达标", "ret.s.short": "录像不足", "ret.s.no_footage": "无录像",
    "ret.s.policy_below_30_days": "策略低于30天",
  },
  en: {
    "app.title": "Video Monitoring Center",
    "nav.wall": "Wall", "nav.alerts": "Alerts", "nav.camera": "Camera", "nav.clip": "Clip export",
    "nav.reports": "Reports", "nav.logout": "Log out",
    "login.title": "Log in", "login.token": "Access token", "login.remember": "Remember on this device",
    "login.submit": "Log in", "login.bad": "Invalid or revoked token",
    "conn.live": "Live", "conn.lost": "Connection lost, reconnecting…",
    "rate.online": "Online", "rate.upload": "Upload", "rate.intact": "Intact", "rate.target": "target",
    "count.devices": "Devices", "count.online": "Online", "count.offline": "Offline", "count.degraded": "Degraded",
    "count.unknown": "Unknown", "count.alerts": "Active alerts",
    "wall.tree": "Monitoring centers", "wall.problems": "Dark and degraded cameras, longest first",
    "wall.none": "All cameras fine", "wall.more": "{n} more", "wall.grid": "Tiles", "wall.cycle": "Cycle (s)",
    "wall.cams": "Cameras", "wall.newAlert": "New alert", "wall.sound": "Sound", "wall.level": "L{n}",
    "state.online": "online", "state.uploading": "uploading", "state.degraded": "degraded", "state.offline": "offline",
    "state.unknown": "unknown",
    "tile.offline": "OFFLINE", "tile.since": "since {t}, for {d}", "tile.connecting": "connecting…",
    "tile.unavailable": "no live video", "tile.empty": "no camera",
    "alerts.title": "Alerts", "alerts.what": "What", "alerts.state": "State", "alerts.center": "Center", "alerts.kind": "Kind",
    "alerts.all": "all", "alerts.active": "active", "alerts.open": "open", "alerts.acknowledged": "acknowledged",
    "alerts.resolved": "resolved", "alerts.ack": "Acknowledge", "alerts.resolve": "Resolve",
    "alerts.comment": "Comment", "alerts.since": "Since", "alerts.by": "By", "alerts.none": "No alerts",
    "alerts.snapshot": "Snapshot",
    "kind.device_offline": "camera offline", "kind.device_degraded": "picture degraded", "kind.agent_offline": "agent offline", "kind.site_offline": "site offline",
    "camera.details": "Details", "camera.id": "Device ID", "camera.civil": "Civil code", "camera.industry": "Industry",
    "camera.type": "Type", "camera.network": "Network", "camera.serial": "Serial", "camera.agent": "Agent",
    "camera.lastSeen": "Last signal", "camera.fps": "Frame rate", "camera.bitrate": "Bit rate",
    "camera.timeline": "Uptime timeline", "camera.quality": "Picture quality", "camera.noQuality": "No quality data yet",
    "camera.open": "Open", "camera.search": "20-digit device ID",
    "clip.title": "Clip export", "clip.device": "Device ID", "clip.start": "Start", "clip.end": "End",
    "clip.reason": "Reason", "clip.case": "Case number", "clip.submit": "Export MP4",
    "clip.forbidden": "Your role ({role}) may not export clips; the police role is needed.",
    "clip.done": "Exported {n} bytes, SHA-256 {sha}", "clip.failed": "Export failed: {e}",
    "reports.title": "Availability and retention report", "reports.availability": "Availability", "reports.period": "Period", "reports.csv": "Download CSV",
    "reports.center": "Center", "reports.devices": "Devices", "reports.worst": "Worst cameras",
    "reports.monitored": "Monitored", "common.loading": "Loading…", "common.error": "Error: {e}",
    "common.forbidden": "Your role may not open this page",
    "rec.title": "Recordings", "rec.forbidden": "Recordings are listed for the police and admin roles only (your role: {role}).",
    "rec.last.1h": "Last 1 h", "rec.last.24h": "Last 24 h", "rec.last.7d": "Last 7 d", "rec.from": "From", "rec.to": "to",
    "rec.show": "Show", "rec.badWindow": "The end must be after the start", "rec.recorded": "recorded", "rec.gap": "gap",
    "rec.motion": "motion", "rec.quality": "quality event", "rec.hold": "legal hold", "rec.q.raised": "raised", "rec.q.cleared": "cleared",
    "rec.clickHint": "click a recorded span to fill the clip export form",
    "rec.summary": "{n} segments, {rec} recorded ({pct}), {g} gaps, {m} segments with motion, {q} quality events",
    "rec.truncated": "(too many segments: only some motion marks shown)", "rec.gapList": "Gaps ({n}, longest first)", "rec.length": "Length",
    "ret.title": "Retention compliance (regulation: {d} days)", "ret.asOf": "as of {t}", "ret.csv": "Download compliance CSV",
    "ret.meeting": "Meeting retention", "ret.ratio": "Share", "ret.stored": "Stored", "ret.hours": "Recorded",
    "ret.completeness": "Completeness (last {d})", "ret.free": "{b} free on the recordings disk", "ret.devices": "Devices, non-compliant first",
    "ret.keep": "Keep days", "ret.source": "Policy from", "ret.footage": "Footage (days)", "ret.oldest": "Oldest recording",
    "ret.status": "Status", "ret.days": "{n} d", "ret.s.compliant": "compliant", "ret.s.short": "too little footage", "ret.s.no_footage": "no footage",
    "ret.s.policy_below_30_days": "policy under 30 days",
  },
};

let current = localStorage.getItem("vms.lang") || ((navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en");

export function lang() {
  return current;
}

export function setLang(l) {
  current = l in STRINGS ? l : "en";
  localStorage.setItem("vms.lang", current);
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
}

/** The label for key, with {name} placeholders filled from vars. */
export function t(key, vars = {}) {
  const s = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : `{${k}}`));
}
