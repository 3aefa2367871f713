// The loadgen's percentile chart drawn with plotters' SVG backend: the size of its SVG
// against the hand-written loadgen/src/chart.rs (about 4 KB for two 60-point lines).
use plotters::prelude::*;

fn main() {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 450)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let mut chart = ChartBuilder::on(&root)
            .caption("latency by percentile", ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..5f64, 0f64..10f64)
            .unwrap();
        chart.configure_mesh().draw().unwrap();
        chart
            .draw_series(LineSeries::new((0..50).map(|i| (i as f64 / 10.0, (i as f64).sqrt())), &BLUE))
            .unwrap();
    }
    println!("{} bytes of SVG", svg.len());
}
